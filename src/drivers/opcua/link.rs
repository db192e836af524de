//! The connection of one device: a supervisor task that connects (with backoff while the server
//! cannot be reached) and drives the library's session event loop, and the [`Link`] through
//! which the driver sees whether the session is up.

use super::endpoint::Endpoint;
use super::{BACKOFF_MAX, BACKOFF_MIN};
use futures_util::StreamExt;
use opcua::client::services::DeleteSubscriptions;
use opcua::client::{Session, SessionConnectMode, SessionPollResult, UARequest};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The connection as the supervisor last saw it.
#[derive(Default)]
struct LinkState {
    session: Option<Arc<Session>>,
    up: bool,
    error: String,
    /// The subscriptions on the server that belong to `session`, as last known (the driver's
    /// one, once made); empty before the driver subscribed.
    subscriptions: Vec<u32>,
}

/// Shared between the supervisor task and the driver. A std Mutex: held for a field copy,
/// never across an await. `changed` ticks whenever the state does.
pub(super) struct Link {
    state: Mutex<LinkState>,
    pub(super) changed: tokio::sync::watch::Sender<()>,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            state: Mutex::default(),
            changed: tokio::sync::watch::Sender::new(()),
        }
    }
}

impl Link {
    /// Whether the first connection attempt is still under way (nothing known yet).
    pub(super) fn first_attempt(&self) -> bool {
        let s = self.lock();
        !s.up && s.error.is_empty()
    }

    pub(super) fn up(&self) {
        let mut s = self.lock();
        s.up = true;
        s.error.clear();
        drop(s);
        self.changed.send_replace(());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session while the connection is up, else the reason it is not.
    pub(super) fn session(&self) -> Result<Arc<Session>, String> {
        let s = self.lock();
        match (&s.session, s.up) {
            (Some(session), true) => Ok(session.clone()),
            _ if s.error.is_empty() => Err("connecting".into()),
            _ => Err(s.error.clone()),
        }
    }

    /// Notes that the driver made subscription `id` on the current session.
    pub(super) fn subscribed(&self, id: u32) {
        self.lock().subscriptions = vec![id];
    }

    fn set_session(&self, session: Option<Arc<Session>>) {
        let mut s = self.lock();
        s.session = session;
        s.subscriptions.clear();
    }

    pub(super) fn down(&self, error: String) {
        let mut s = self.lock();
        s.up = false;
        s.error = error;
        drop(s);
        self.changed.send_replace(());
    }
}

/// Runs the connection of one device until `stop`: connect (with backoff while the server
/// cannot be reached at all), then drive the session's event loop, which reconnects by itself.
pub(super) async fn supervise(
    name: String,
    endpoint: Endpoint,
    link: Arc<Link>,
    stop: CancellationToken,
) {
    let ep = endpoint.clone();
    let client = tokio::task::spawn_blocking(move || ep.client()).await;
    let mut client = match client {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return link.down(e),
        Err(e) => return link.down(format!("client set-up failed: {e}")),
    };
    let mut wait = BACKOFF_MIN;
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = endpoint.session(&mut client) => r,
        };
        let (session, event_loop) = match attempt {
            Ok(s) => s,
            Err(e) => {
                if wait == BACKOFF_MIN {
                    warn!(device = %name, endpoint = %endpoint.url, error = %e, "OPC UA server not reachable; retrying with backoff");
                }
                link.down(e);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        wait = BACKOFF_MIN;
        link.set_session(Some(session.clone()));
        let events = event_loop.enter();
        tokio::pin!(events);
        let ended = loop {
            let event = tokio::select! {
                _ = stop.cancelled() => {
                    // Close the session (which deletes its subscriptions on the server) while
                    // the event loop still runs, for at most 2 s.
                    let close = async {
                        let _ = session.disconnect().await;
                    };
                    let drive = async { while events.next().await.is_some() {} };
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        tokio::select! { _ = close => {}, _ = drive => {} }
                    })
                    .await;
                    return;
                }
                e = futures_util::StreamExt::next(&mut events) => e,
            };
            match event {
                Some(Ok(SessionPollResult::Reconnected(mode))) => {
                    let mode = &mode;
                    info!(device = %name, endpoint = %endpoint.url, how = ?mode, "OPC UA session up");
                    // async-opcua 0.19 recreates the subscriptions while reconnecting, before
                    // the new connection's publish loop exists, and that loop sends no Publish
                    // until something triggers it: without this, a recreated subscription
                    // delivers nothing (tests/opcua.rs, the server restart). Not before the
                    // driver has subscribed (the first connect): a Publish with no
                    // subscription is answered with a BadNoSubscription fault, which the
                    // library logs as an ERROR.
                    if !link.lock().subscriptions.is_empty() {
                        session.trigger_publish_now();
                    }
                    if let SessionConnectMode::ReactivatedSession(_) = mode {
                        delete_abandoned(&name, &session, &link);
                    }
                    link.up();
                }
                Some(Ok(SessionPollResult::ConnectionLost(code))) => {
                    warn!(device = %name, status = %code.sub_code().name(), "OPC UA connection lost; reconnecting with backoff");
                    link.down(format!("connection lost ({})", code.sub_code().name()));
                }
                Some(Ok(SessionPollResult::ReconnectFailed(code))) => {
                    link.down(format!("reconnect failed ({})", code.sub_code().name()));
                }
                Some(Ok(_)) => {}
                Some(Err(code)) => break format!("session ended ({})", code.sub_code().name()),
                None => break "session closed".to_string(),
            }
        };
        warn!(device = %name, error = %ended, "OPC UA session ended; starting a new one");
        link.down(ended);
        link.set_session(None);
    }
}

/// After the session was activated again on a new connection (a network cut), async-opcua
/// 0.19 still asks the server to transfer its subscriptions, and when the server refuses
/// (node-opcua answers BadUserAccessDenied for a transfer into the same session) it creates
/// new ones without deleting the old: they stay on the server, publishing into the void, for
/// as long as the session lives (tests/opcua.rs, the network cut against node-opcua). Those
/// left behind are deleted here, on a task of their own (the answer arrives through the event
/// loop this is called from).
fn delete_abandoned(name: &str, session: &Arc<Session>, link: &Link) {
    let current = session
        .subscription_state()
        .lock()
        .subscription_ids()
        .unwrap_or_default();
    let abandoned: Vec<u32> = {
        let mut s = link.lock();
        let old = std::mem::replace(&mut s.subscriptions, current.clone());
        old.into_iter().filter(|id| !current.contains(id)).collect()
    };
    if abandoned.is_empty() {
        return;
    }
    info!(device = %name, subscriptions = ?abandoned, now = ?current, "OPC UA subscriptions were recreated after the reconnect; deleting the old ones on the server");
    let session = session.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        let sent = DeleteSubscriptions::new(&session)
            .subscription_ids(abandoned.clone())
            .send(session.channel())
            .await;
        if let Err(e) = sent {
            warn!(device = %name, subscriptions = ?abandoned, error = %super::describe(&e), "Old OPC UA subscriptions not deleted; the server drops them when the session ends");
        }
    });
}
