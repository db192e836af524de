//! `POST /api/account/password`: the logged-in user changes their own password (SPEC §3.1: the
//! generated admin password is changed in the UI).
//!
//! Where the new password goes depends on where the old one came from:
//! - a user of `web.users`: their `password_hash` in the config file is replaced in place
//!   ([`crate::config::edit`]) and the file applied like any other change (validated, the old
//!   version kept in the history, applied without a restart);
//! - the built-in `admin` (no `web.users`): the hash is kept in `<data_dir>/admin-password`
//!   (mode 0600), and the generated `initial-admin-password` file is removed. This works on the
//!   built-in defaults too, where there is no config file to write.
//!
//! The current password is asked for and checked like a login, counting towards the same
//! lockout. A change ends every session of that user; the one that asked gets a new session
//! (cookie and CSRF token) in the answer.

use super::api::{apply_error, locked};
use super::auth::{self, Caller, LoginError};
use super::{error, ApiError, Served, State};
use crate::config::history;
use crate::gateway::{ApplyError, Change};
use axum::extract::State as AxState;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// The shortest new password accepted, in characters.
pub const MIN_PASSWORD: usize = 8;
/// The longest, in bytes (a login refuses longer ones too).
pub const MAX_PASSWORD: usize = 1024;

#[derive(Deserialize)]
pub struct PasswordChange {
    current: String,
    new: String,
}

/// `POST /api/account/password` `{"current","new"}` → `{"username","csrf_token","stored_in"}`
/// and a new session cookie. 403 when `current` is wrong, 400 when `new` is too short or long,
/// 429 when the user is locked out, 409 when the config's hash cannot be replaced in place.
pub async fn change_password(
    AxState(st): AxState<Arc<State>>,
    Extension(served): Extension<Served>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    let change: PasswordChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected JSON {{\"current\", \"new\"}}: {e}"),
            )
        }
    };
    if let Err(message) = check_new(&change) {
        return error(StatusCode::BAD_REQUEST, message);
    }
    let username = caller.session.username.clone();
    match st.auth.check_password(&username, &change.current).await {
        Ok(()) => {}
        Err(LoginError::Wrong) => {
            tracing::warn!(%username, "Web password change refused: wrong current password");
            return error(StatusCode::FORBIDDEN, "the current password is wrong");
        }
        Err(LoginError::Locked(left)) => return locked(left),
        Err(LoginError::Busy) => return super::api::busy(),
    }
    let new = change.new;
    let hash = match tokio::task::spawn_blocking(move || crate::auth::hash_password(&new)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot hash: {e}"),
            )
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot hash: {e}"),
            )
        }
    };
    let stored_in = match store(&st, &username, &hash).await {
        Ok(where_) => where_,
        Err(r) => return r,
    };
    tracing::info!(%username, stored_in, "Web password changed; the user's other sessions ended");
    // Storing ended every session of this user, this one included: it goes on under a new id.
    let (id, session) = st.auth.create_session(&username);
    let mut r = Json(json!({
        "username": session.username,
        "csrf_token": session.csrf,
        "stored_in": stored_in,
    }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::cookie(Some(&id), served.tls)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn check_new(change: &PasswordChange) -> Result<(), String> {
    let chars = change.new.chars().count();
    if chars < MIN_PASSWORD {
        return Err(format!(
            "the new password is too short: at least {MIN_PASSWORD} characters"
        ));
    }
    if change.new.len() > MAX_PASSWORD || change.current.len() > MAX_PASSWORD {
        return Err(format!("passwords are at most {MAX_PASSWORD} bytes"));
    }
    if change.new == change.current {
        return Err("the new password is the same as the current one".into());
    }
    Ok(())
}

/// Puts the new hash where `username`'s password comes from; returns where, for the answer.
async fn store(st: &Arc<State>, username: &str, hash: &str) -> Result<String, Response> {
    let config = st.gw.config();
    if config.web.users.is_empty() {
        let data_dir = config.gateway.data_dir.clone();
        let file = data_dir.join(crate::auth::ADMIN_PASSWORD_FILE);
        let (dir, h) = (data_dir.clone(), hash.to_string());
        let written =
            tokio::task::spawn_blocking(move || crate::auth::store_admin_hash(&dir, &h)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "cannot write {}: {e}; the password is unchanged",
                        file.display()
                    ),
                ))
            }
            Err(e) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        }
        st.set_users(&config, &data_dir).await.map_err(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the new password was written but cannot be used: {e:#}"),
            )
        })?;
        return Ok(file.display().to_string());
    }
    let Some(path) = st.gw.config_path().map(std::path::Path::to_path_buf) else {
        return Err(apply_error(ApplyError::NoFile));
    };
    // Reading and validating the file (which checks the files it names) is blocking work.
    let (file, user, h) = (path.clone(), username.to_string(), hash.to_string());
    let edit = tokio::task::spawn_blocking(move || {
        let text = std::fs::read_to_string(&file).map_err(|e| {
            ApiError::from_parts(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read config file {}: {e}", file.display()),
            )
        })?;
        let edited = crate::config::edit::set_web_password_hash(
            &text,
            history::config_base(&file),
            &user,
            &h,
        )
        .map_err(|message| ApiError::from_parts(StatusCode::CONFLICT, message))?;
        Ok::<_, ApiError>((text, edited))
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (text, edited) = edit.map_err(IntoResponse::into_response)?;
    st.gw
        .reconfigure(Change {
            text: edited,
            if_match: Some(history::version(&text)),
            by: format!("password change ({username})"),
        })
        .await
        .map_err(apply_error)?;
    Ok(path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(current: &str, new: &str) -> PasswordChange {
        PasswordChange {
            current: current.into(),
            new: new.into(),
        }
    }

    #[test]
    fn new_passwords_are_checked() {
        assert!(check_new(&change("old password", "long enough")).is_ok());
        assert!(check_new(&change("old", "short"))
            .unwrap_err()
            .contains("too short"));
        // Characters, not bytes: eight accented letters are enough.
        assert!(check_new(&change("old", "éééééééé")).is_ok());
        assert!(check_new(&change("same same", "same same"))
            .unwrap_err()
            .contains("same"));
        let huge = "x".repeat(MAX_PASSWORD + 1);
        assert!(check_new(&change("old", &huge))
            .unwrap_err()
            .contains("at most"));
    }
}
