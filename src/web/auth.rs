//! Web users, sessions, CSRF tokens and the login lockout (SPEC §6).
//!
//! - A session is a random 256-bit id (hex) in the `tidegate_session` cookie (HttpOnly,
//!   SameSite=Strict, Secure under TLS), kept in memory; it ends at logout, after
//!   [`IDLE_TIMEOUT`] without a request, when its user is removed or its password changes,
//!   and when the daemon restarts.
//! - Each session has a random CSRF token, answered by login and `GET /api/session`; every
//!   state-changing request (anything but GET/HEAD) must carry it in `X-CSRF-Token`.
//!   No session → 401, checked before the token → 403.
//! - [`MAX_FAILURES`] failed logins for one username within [`FAILURE_WINDOW`] lock that
//!   username for [`LOCKOUT`]: 429 with `Retry-After`, even with the right password.
//!   Attempts still being verified count, so parallel guesses cannot slip past the limit.
//! - Passwords are verified with argon2id on the blocking pool, never on the async runtime,
//!   through the process-wide [`crate::auth::Verifier`] the broker shares: web logins
//!   together hold at most a few places in its line; beyond them a login is refused with
//!   503 (`LoginError::Busy`) and counts as no attempt. An unknown username is checked
//!   against a dummy hash the same way, so it costs the same time and no more memory.

use super::{error, State};
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use password_hash::rand_core::{OsRng, RngCore};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

pub const COOKIE: &str = "tidegate_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session unused this long ends.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const MAX_FAILURES: usize = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
pub const LOCKOUT: Duration = Duration::from_secs(60);
/// Sessions kept at most; the least recently used goes first.
const MAX_SESSIONS: usize = 1000;
/// Usernames whose failures are tracked at most (entries older than the window go first).
const MAX_TRACKED: usize = 10_000;

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub username: String,
    pub csrf: String,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct Failures {
    times: VecDeque<Instant>,
    in_flight: usize,
    locked_until: Option<Instant>,
}

/// Users, sessions, lockouts.
pub struct Auth {
    users: RwLock<HashMap<String, String>>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, Failures>>,
    verifier: crate::auth::Verifier,
}

/// Why a login was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    /// Wrong username or password.
    Wrong,
    /// Locked out; try again after this long.
    Locked(Duration),
    /// Too many password checks under way (a flood); try again shortly.
    Busy,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without an early exit (the CSRF token).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A hash to verify against for unknown users, so their logins take as long as real ones.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| crate::auth::hash_password(&random_hex()).unwrap_or_default())
}

impl Default for Auth {
    fn default() -> Self {
        Self::new()
    }
}

impl Auth {
    pub fn new() -> Self {
        Auth {
            users: RwLock::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            verifier: crate::auth::Verifier::global().clone(),
        }
    }

    /// Sets the users (username, argon2 hash); ends the sessions of users removed or whose
    /// hash changed.
    pub fn set_users(&self, users: Vec<(String, String)>) {
        let new: HashMap<String, String> = users.into_iter().collect();
        let mut current = self.users.write().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = current
            .iter()
            .filter(|(u, h)| new.get(*u) != Some(*h))
            .map(|(u, _)| u.clone())
            .collect();
        *current = new;
        drop(current);
        if !gone.is_empty() {
            self.sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, s| !gone.contains(&s.username));
        }
    }

    /// Checks the lockout, verifies the password on the blocking pool, and makes a session.
    /// Returns (session id, session).
    pub async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<(String, Session), LoginError> {
        self.check_password(username, password).await?;
        Ok(self.create_session(username))
    }

    /// Verifies `username`'s password as a login does, counting a failure towards the same
    /// lockout (a password change asks for the current one; a stolen session must not be a
    /// way around the limit).
    pub async fn check_password(&self, username: &str, password: &str) -> Result<(), LoginError> {
        self.begin_attempt(username)?;
        let hash = self
            .users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(username)
            .cloned();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| dummy_hash().to_string());
        let checked = self
            .verifier
            .verify(crate::auth::Source::Web, password.as_bytes(), &hash)
            .await;
        match checked {
            Ok(ok) => self.end_attempt(username, ok && known),
            Err(crate::auth::Busy) => {
                self.cancel_attempt(username);
                Err(LoginError::Busy)
            }
        }
    }

    /// Refuses when `username` is locked out (or would be, counting attempts in flight);
    /// otherwise counts an attempt in flight.
    fn begin_attempt(&self, username: &str) -> Result<(), LoginError> {
        let now = Instant::now();
        let mut all = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() >= MAX_TRACKED && !all.contains_key(username) {
            all.retain(|_, f| {
                f.in_flight > 0
                    || f.locked_until.is_some_and(|t| t > now)
                    || f.times.back().is_some_and(|t| now - *t < FAILURE_WINDOW)
            });
        }
        let f = all.entry(username.to_string()).or_default();
        if let Some(until) = f.locked_until {
            if until > now {
                return Err(LoginError::Locked(until - now));
            }
            f.locked_until = None;
        }
        while f.times.front().is_some_and(|t| now - *t >= FAILURE_WINDOW) {
            f.times.pop_front();
        }
        if f.times.len() + f.in_flight >= MAX_FAILURES {
            return Err(LoginError::Locked(LOCKOUT));
        }
        f.in_flight += 1;
        Ok(())
    }

    /// An attempt that was never checked (busy): it counts neither way.
    fn cancel_attempt(&self, username: &str) {
        let mut all = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = all.get_mut(username) {
            f.in_flight = f.in_flight.saturating_sub(1);
        }
    }

    fn end_attempt(&self, username: &str, ok: bool) -> Result<(), LoginError> {
        let now = Instant::now();
        let mut all = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let f = all.entry(username.to_string()).or_default();
        f.in_flight = f.in_flight.saturating_sub(1);
        if ok {
            f.times.clear();
            return Ok(());
        }
        f.times.push_back(now);
        if f.times.len() >= MAX_FAILURES {
            f.times.clear();
            f.locked_until = Some(now + LOCKOUT);
            tracing::warn!(
                username,
                "{MAX_FAILURES} failed web logins within a minute; locked for {} s",
                LOCKOUT.as_secs()
            );
            return Err(LoginError::Locked(LOCKOUT));
        }
        Err(LoginError::Wrong)
    }

    /// A new session for `username` (after a login, or a password change that ended the old
    /// ones). Returns (session id, session).
    pub fn create_session(&self, username: &str) -> (String, Session) {
        let id = random_hex();
        let session = Session {
            username: username.to_string(),
            csrf: random_hex(),
            last_seen: Instant::now(),
        };
        let mut all = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        all.retain(|_, s| now - s.last_seen < IDLE_TIMEOUT);
        if all.len() >= MAX_SESSIONS {
            if let Some(oldest) = all
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            {
                all.remove(&oldest);
            }
        }
        all.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The live session with this id, marked as used now; `None` when unknown or idle too long.
    pub fn session(&self, id: &str) -> Option<Session> {
        let mut all = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let s = all.get_mut(id)?;
        if now - s.last_seen >= IDLE_TIMEOUT {
            all.remove(id);
            return None;
        }
        s.last_seen = now;
        Some(s.clone())
    }

    /// Whether the session still exists, without marking it used (SSE streams).
    pub fn alive(&self, id: &str) -> bool {
        let all = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        all.get(id)
            .is_some_and(|s| Instant::now() - s.last_seen < IDLE_TIMEOUT)
    }

    pub fn logout(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// The session id from the request's cookies.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The authenticated caller, put in the request's extensions by [`require_session`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub session_id: String,
    pub session: Session,
}

/// Every `/api/*` route but login: a session (401), and for a state-changing method its
/// CSRF token (403).
pub async fn require_session(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some((id, session)) =
        session_id(request.headers()).and_then(|id| state.auth.session(&id).map(|s| (id, s)))
    else {
        return error(StatusCode::UNAUTHORIZED, "not logged in");
    };
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let token = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if token.is_empty() {
            return error(StatusCode::FORBIDDEN, "missing X-CSRF-Token header");
        }
        if !same(token, &session.csrf) {
            return error(StatusCode::FORBIDDEN, "wrong X-CSRF-Token");
        }
    }
    request.extensions_mut().insert(Caller {
        session_id: id,
        session,
    });
    next.run(request).await.into_response()
}

/// The Set-Cookie value for a new session (`id`) or a logout (`None`).
pub fn cookie(id: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_with(user: &str, password: &str) -> Auth {
        let a = Auth::new();
        // A cheap hash keeps the test fast; the format is the same.
        let hash = {
            use argon2::password_hash::{PasswordHasher, SaltString};
            let params = argon2::Params::new(256, 1, 1, None).unwrap();
            let argon =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            argon
                .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
                .unwrap()
                .to_string()
        };
        a.set_users(vec![(user.into(), hash)]);
        a
    }

    #[tokio::test(start_paused = true)]
    async fn five_failures_lock_for_a_minute() {
        let a = auth_with("admin", "right");
        for _ in 0..4 {
            assert_eq!(
                a.login("admin", "wrong").await.unwrap_err(),
                LoginError::Wrong
            );
        }
        assert_eq!(
            a.login("admin", "wrong").await.unwrap_err(),
            LoginError::Locked(LOCKOUT)
        );
        // Locked even with the right password.
        tokio::time::advance(Duration::from_secs(30)).await;
        match a.login("admin", "right").await.unwrap_err() {
            LoginError::Locked(left) => assert!(left <= Duration::from_secs(30), "{left:?}"),
            other => panic!("{other:?}"),
        }
        // Other users are not locked.
        assert_eq!(a.login("other", "x").await.unwrap_err(), LoginError::Wrong);
        tokio::time::advance(Duration::from_secs(31)).await;
        let (id, s) = a.login("admin", "right").await.unwrap();
        assert_eq!(s.username, "admin");
        assert!(a.session(&id).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_older_than_a_minute_do_not_count() {
        let a = auth_with("admin", "right");
        for _ in 0..4 {
            let _ = a.login("admin", "wrong").await;
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        for _ in 0..4 {
            assert_eq!(
                a.login("admin", "wrong").await.unwrap_err(),
                LoginError::Wrong
            );
        }
        assert!(a.login("admin", "right").await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_expire_when_idle_and_end_with_their_user() {
        let a = auth_with("admin", "right");
        let (id, s) = a.login("admin", "right").await.unwrap();
        assert_eq!(s.csrf.len(), 64);
        assert_eq!(id.len(), 64);
        tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        assert!(a.session(&id).is_some(), "used within the idle time");
        tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        assert!(a.alive(&id));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(a.session(&id).is_none(), "idle too long");

        let (id, _) = a.login("admin", "right").await.unwrap();
        a.set_users(vec![("someone".into(), "$argon2id$x".into())]);
        assert!(a.session(&id).is_none(), "user removed");
        let (id2, _) = a
            .login("someone", "x")
            .await
            .map(|_| ())
            .map_or_else(|e| (format!("{e:?}"), ()), |_| ("logged in".into(), ()));
        assert_eq!(id2, "Wrong", "a malformed hash never matches");
    }

    #[test]
    fn cookie_and_header_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=b; tidegate_session=abc; c=d".parse().unwrap(),
        );
        assert_eq!(session_id(&h).as_deref(), Some("abc"));
        assert!(cookie(Some("x"), true).contains("; Secure"));
        assert!(cookie(Some("x"), false).contains("HttpOnly; SameSite=Strict"));
        assert!(cookie(None, false).contains("Max-Age=0"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
