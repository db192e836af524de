//! `tidegate opcua browse`: prints an OPC UA server's address space (or, with `--yaml`, tag
//! entries ready to paste into a device's `tags:`), through `drivers::opcua::browse`.

use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
use tidegate::drivers::opcua::{browse, config as ua, convert, Endpoint};

#[derive(Subcommand)]
pub enum OpcuaCommand {
    /// Print the address space below a node (default: the Objects folder)
    Browse {
        /// The server, like opc.tcp://192.168.1.60:4840
        #[arg(long)]
        endpoint: String,
        /// The node to start from (ns=2;s=..., ns=2;i=..., i=85)
        #[arg(long, default_value = "i=85", value_name = "ID")]
        node: String,
        /// How many levels below the node
        #[arg(long, default_value_t = 3, value_name = "N")]
        depth: usize,
        /// Print tag entries for the config instead of a tree
        #[arg(long)]
        yaml: bool,
        /// none | basic256sha256 | aes128_sha256_rsaoaep | aes256_sha256_rsapss
        #[arg(long, default_value = "none")]
        policy: String,
        /// none | sign | sign_and_encrypt
        #[arg(long = "security-mode", default_value = "none")]
        security_mode: String,
        /// Trust the server's certificate if it is not in PKI_DIR/trusted/ yet (and keep it there)
        #[arg(long)]
        trust_on_first_use: bool,
        /// Where the client certificate and the trusted server certificates are
        /// (default: ./tidegate-data/pki, the daemon's data_dir/pki)
        #[arg(long, value_name = "PKI_DIR")]
        pki: Option<PathBuf>,
        /// Log in as this user (the password from --password-file, or stdin)
        #[arg(long)]
        username: Option<String>,
        /// A file holding the password
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("`{s}` is not a {what}"))
}

pub(crate) fn opcua(cmd: OpcuaCommand) -> ExitCode {
    let OpcuaCommand::Browse {
        endpoint,
        node,
        depth,
        yaml,
        policy,
        security_mode,
        trust_on_first_use,
        pki,
        username,
        password_file,
    } = cmd;
    let prepared = (|| -> Result<(Endpoint, opcua::types::NodeId), String> {
        ua::check_endpoint(&endpoint)?;
        let node = convert::parse_node_id(&node)?;
        let policy: ua::Policy = parse("security policy", &policy)?;
        let mode: ua::SecurityMode = parse("security mode", &security_mode)?;
        let password = match (&username, &password_file) {
            (None, _) => None,
            // The rules of a config's `password_file` (one line, owner, mode, size), so a file
            // that works here works in the config too.
            (Some(_), Some(f)) => Some(tidegate::config::files::read_password(f, None)?),
            (Some(_), None) => Some(
                rpassword::prompt_password("Password: ")
                    .map_err(|e| format!("cannot read the password: {e}"))?,
            ),
        };
        let pki = pki.unwrap_or_else(|| ua::pki_dir(&tidegate::config::default_data_dir()));
        let identity = match (username, password) {
            (Some(u), Some(p)) => opcua::client::IdentityToken::new_user_name(u, p),
            _ => opcua::client::IdentityToken::Anonymous,
        };
        Ok((
            Endpoint {
                url: endpoint.clone(),
                policy,
                mode,
                trust_on_first_use,
                identity,
                pki,
                timeout: std::time::Duration::from_secs(10),
            },
            node,
        ))
    })();
    let (endpoint, node) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tidegate: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidegate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let found = runtime.block_on(browse::with_session(&endpoint, |session| async move {
        browse::browse(&session, &node, depth).await
    }));
    match found {
        Ok(found) => {
            if yaml {
                print!("{}", browse::yaml(&found));
            } else {
                print!("{}", browse::tree(&found));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tidegate: {e}");
            ExitCode::FAILURE
        }
    }
}
