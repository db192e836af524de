//! The endpoint of an OPC UA device: what the client needs to reach the server (URL, security,
//! identity, PKI), the client built from it, and the session on the configured endpoint.

use super::config::{self, Auth, Policy, SecurityMode};
use super::{BACKOFF_MAX, BACKOFF_MIN, MAX_ARRAY};
use crate::config::Device;
use opcua::client::{Client, ClientBuilder, ClientEndpoint, IdentityToken, Session};
use opcua::crypto::SecurityPolicy;
use opcua::types::MessageSecurityMode;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The id of the one endpoint in the client's config.
const DEVICE_ENDPOINT: &str = "device";

/// What the client needs to reach the server.
#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    pub policy: Policy,
    pub mode: SecurityMode,
    pub trust_on_first_use: bool,
    pub identity: IdentityToken,
    pub pki: PathBuf,
    pub timeout: Duration,
}

impl Endpoint {
    /// The endpoint of an OPC UA device; `data_dir` holds the PKI. Fails when a password or
    /// certificate file cannot be read (read on a blocking thread, off the runtime).
    pub async fn of(device: &Device, data_dir: &Path) -> Result<Endpoint, String> {
        let security = device.security.clone().unwrap_or_default();
        let auth = device.auth.clone().unwrap_or_default();
        let identity = tokio::task::spawn_blocking(move || identity(&auth))
            .await
            .map_err(|e| format!("reading the OPC UA credentials failed: {e}"))??;
        Ok(Endpoint {
            url: device.endpoint.clone().unwrap_or_default(),
            policy: security.policy,
            mode: security.mode,
            trust_on_first_use: security.trust_on_first_use,
            identity,
            pki: config::pki_dir(data_dir),
            timeout: device.timeout().0.max(Duration::from_secs(5)),
        })
    }

    /// The client, with its certificate created under `pki/own/` if there is none yet.
    /// Blocking (key generation): call it off the runtime.
    pub fn client(&self) -> Result<Client, String> {
        // The endpoint is named in the client's own config too, though the session is made
        // on the endpoint the server describes ([`Endpoint::session`]): with none the library
        // warns "Endpoint config contains no endpoints" at every start.
        let mut named = ClientEndpoint::new(self.url.as_str());
        named.security_policy = SecurityPolicy::from_uri(self.policy.uri()).to_str().into();
        named.security_mode = self.security_mode().into();
        ClientBuilder::new()
            .endpoint(DEVICE_ENDPOINT, named)
            .default_endpoint(DEVICE_ENDPOINT)
            .application_name("tidegate")
            .application_uri(format!("urn:tidegate:{}", hostname()))
            .product_uri("urn:tidegate")
            .pki_dir(&self.pki)
            .create_sample_keypair(true)
            .trust_server_certs(self.trust_on_first_use)
            // Checked: trusted/ (or first use). Not checked: the certificate's host name, which
            // rarely matches the address a gateway reaches a PLC by.
            .verify_server_certs(false)
            .session_retry_limit(-1)
            .session_retry_initial(BACKOFF_MIN)
            .session_retry_max(BACKOFF_MAX)
            .keep_alive_interval(Duration::from_secs(10))
            .max_failed_keep_alive_count(3)
            .request_timeout(self.timeout)
            // The default (1000) refused the answer to CreateMonitoredItems for a device of
            // 2000 tags (BadDecodingError), and dropped the connection over and over
            // (benches/opcua/load.sh).
            .max_array_length(MAX_ARRAY)
            .session_name("tidegate")
            .session_timeout(60_000)
            .client()
            .map_err(|e| format!("OPC UA client settings refused: {}", e.join("; ")))
    }

    fn security_mode(&self) -> MessageSecurityMode {
        match self.mode {
            SecurityMode::None => MessageSecurityMode::None,
            SecurityMode::Sign => MessageSecurityMode::Sign,
            SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
        }
    }

    /// Asks the server for its endpoints and makes a session on the one with the configured
    /// policy and mode. The session connects to the configured URL, not the one the server
    /// advertises: a server behind NAT, a proxy or a port forward advertises an address the
    /// gateway may not reach (the client library would keep the advertised port). The session
    /// is not connected until its event loop runs.
    pub async fn session(
        &self,
        client: &mut Client,
    ) -> Result<
        (
            Arc<Session>,
            opcua::client::SessionEventLoop<impl opcua::client::transport::Connector + 'static>,
        ),
        String,
    > {
        let endpoints = tokio::time::timeout(
            self.timeout,
            client.get_server_endpoints_from_url(self.url.as_str()),
        )
        .await
        .map_err(|_| format!("timeout reaching {}", self.url))?
        .map_err(|e| describe(&e))?;
        let mode = self.security_mode();
        let mut endpoint = endpoints
            .iter()
            .find(|e| {
                e.security_mode == mode && e.security_policy_uri.as_ref() == self.policy.uri()
            })
            .cloned()
            .ok_or_else(|| {
                let offered: Vec<String> = endpoints
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {:?}",
                            e.security_policy_uri
                                .as_ref()
                                .rsplit('#')
                                .next()
                                .unwrap_or_default(),
                            e.security_mode
                        )
                    })
                    .collect();
                format!(
                    "the server offers no endpoint with policy {:?} and mode {:?} (it offers: {})",
                    self.policy,
                    self.mode,
                    offered.join(", ")
                )
            })?;
        endpoint.endpoint_url = self.url.as_str().into();
        client
            .connect_to_endpoint_directly(endpoint, self.identity.clone())
            .map_err(|e| describe(&e))
    }
}

/// The identity of `auth`: a user name with its password (from `password_file` when given),
/// an X.509 user certificate with its key, or anonymous. Blocking (reads files).
fn identity(auth: &Auth) -> Result<IdentityToken, String> {
    use crate::config::files::{read_regular, MAX_FILE};
    Ok(
        match (&auth.username, &auth.certificate, &auth.private_key) {
            (Some(user), _, _) => IdentityToken::new_user_name(
                user.clone(),
                config::password(auth)?.unwrap_or_default(),
            ),
            (None, Some(cert), Some(key)) => {
                let c = read_regular(cert, MAX_FILE)?;
                let cert = opcua::crypto::X509::from_der(&c)
                    .or_else(|_| opcua::crypto::X509::from_pem(&c))
                    .map_err(|e| format!("{}: not a certificate: {e}", cert.display()))?;
                let k = read_regular(key, MAX_FILE)?;
                let key = opcua::crypto::PrivateKey::from_pem(&k)
                    .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
                IdentityToken::X509(Box::new(cert), Box::new(key))
            }
            _ => IdentityToken::Anonymous,
        },
    )
}

/// An OPC UA error as a short sentence: the status name, then the library's detail.
pub fn describe(e: &opcua::types::Error) -> String {
    let name = e.status().sub_code().name();
    let text = e.to_string();
    if text.contains(name) {
        text
    } else {
        format!("{name}: {text}")
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
