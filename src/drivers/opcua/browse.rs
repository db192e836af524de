//! `tidegate opcua browse`: walks the hierarchical references of an address space from one
//! node, depth first, and prints a tree (or tag entries ready for the config).

use super::convert;
use opcua::client::Session;
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, BrowseResult, NodeClass, NodeId, ReadValueId,
    ReferenceTypeId, TimestampsToReturn,
};
use std::fmt::Write as _;

/// One node found while browsing.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub depth: usize,
    pub node_id: String,
    pub browse_name: String,
    pub class: String,
    /// Variables: the value as a reading would show it, and its type.
    pub value: Option<(String, String)>,
}

/// Browses `start` down to `depth` levels (1 = its children only).
pub async fn browse(session: &Session, start: &NodeId, depth: usize) -> Result<Vec<Found>, String> {
    let mut seen = std::collections::HashSet::new();
    browse_inner(session, start, 1, depth, &mut seen).await
}

/// The subtree under `node` at `level`, depth first.
async fn browse_inner(
    session: &Session,
    node: &NodeId,
    level: usize,
    depth: usize,
    seen: &mut std::collections::HashSet<NodeId>,
) -> Result<Vec<Found>, String> {
    if level > depth || !seen.insert(node.clone()) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for r in children(session, node).await? {
        let id = r.node_id.node_id.clone();
        let value = if r.node_class == NodeClass::Variable {
            Some(read_value(session, &id).await)
        } else {
            None
        };
        out.push(Found {
            depth: level,
            node_id: id.to_string(),
            browse_name: r.browse_name.name.as_ref().to_string(),
            class: format!("{:?}", r.node_class),
            value,
        });
        out.extend(Box::pin(browse_inner(session, &id, level + 1, depth, seen)).await?);
    }
    Ok(out)
}

/// The forward hierarchical references of `node`, following continuation points.
async fn children(
    session: &Session,
    node: &NodeId,
) -> Result<Vec<opcua::types::ReferenceDescription>, String> {
    let desc = BrowseDescription {
        node_id: node.clone(),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
        include_subtypes: true,
        node_class_mask: 0,
        result_mask: 0x3f,
    };
    let mut results: Vec<BrowseResult> = session
        .browse(&[desc], 1000, None)
        .await
        .map_err(|e| format!("browse {node}: {}", super::describe(&e)))?;
    let mut refs = Vec::new();
    while let Some(r) = results.pop() {
        if r.status_code.is_bad() {
            return Err(format!(
                "browse {node}: {}",
                r.status_code.sub_code().name()
            ));
        }
        refs.extend(r.references.unwrap_or_default());
        if r.continuation_point.is_null() {
            break;
        }
        results = session
            .browse_next(false, &[r.continuation_point])
            .await
            .map_err(|e| format!("browse {node}: {}", super::describe(&e)))?;
    }
    Ok(refs)
}

/// A variable's value as JSON text and its type name, or the reason there is none.
async fn read_value(session: &Session, node: &NodeId) -> (String, String) {
    match session
        .read(
            &[ReadValueId::new(node.clone(), AttributeId::Value)],
            TimestampsToReturn::Neither,
            0.0,
        )
        .await
    {
        Ok(v) => match v.first() {
            Some(dv) => describe_value(dv),
            None => ("(no value)".into(), String::new()),
        },
        Err(e) => (format!("({})", super::describe(&e)), String::new()),
    }
}

/// A data value as JSON text (or `(StatusName)` when Bad) and its type name.
pub fn describe_value(dv: &opcua::types::DataValue) -> (String, String) {
    let ty = dv
        .value
        .as_ref()
        .map(|v| match (v, v.scalar_type_id()) {
            (opcua::types::Variant::Empty, _) => "Empty".to_string(),
            (opcua::types::Variant::Array(_), Some(t)) => format!("Array of {t:?}"),
            (_, Some(t)) => format!("{t:?}"),
            (_, None) => "unknown".to_string(),
        })
        .unwrap_or_else(|| "Empty".into());
    match convert::reading(dv) {
        Ok(v) => (v.to_json().to_string(), ty),
        Err(e) => (format!("({e})"), ty),
    }
}

/// The tree as text, indented two spaces per level.
pub fn tree(found: &[Found]) -> String {
    let mut s = String::new();
    for f in found {
        let indent = "  ".repeat(f.depth.saturating_sub(1));
        let _ = write!(s, "{indent}{} [{}] {}", f.browse_name, f.class, f.node_id);
        if let Some((value, ty)) = &f.value {
            let _ = write!(s, " = {value} ({ty})");
        }
        s.push('\n');
    }
    s
}

/// Tag entries for the config: one per variable, named from its browse name.
pub fn yaml(found: &[Found]) -> String {
    let mut s = String::from("tags:\n");
    let mut used = std::collections::HashSet::new();
    for f in found.iter().filter(|f| f.value.is_some()) {
        let base = tag_name(&f.browse_name);
        let mut name = base.clone();
        let mut n = 2;
        while !used.insert(name.clone()) {
            name = format!("{base}_{n}");
            n += 1;
        }
        let _ = writeln!(
            s,
            "  - {{ name: {name}, node_id: {} }}",
            serde_json::Value::String(f.node_id.clone())
        );
    }
    s
}

/// A browse name as a tag name (`[a-z0-9_-]+`).
pub fn tag_name(browse_name: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in browse_name.chars() {
        if c.is_ascii_alphanumeric() {
            // A camelCase boundary (a lower-case letter or digit, then a capital) is a `_`.
            if c.is_ascii_uppercase() && prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        } else {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    let out = out.trim_end_matches('_').to_string();
    if out.is_empty() {
        "tag".into()
    } else {
        out
    }
}

/// Connects to `endpoint` once (no reconnects), runs `work` on the session, and closes it.
/// For one-off commands: `tidegate opcua browse`, the web UI's test-read.
pub async fn with_session<T, F, Fut>(endpoint: &super::Endpoint, work: F) -> Result<T, String>
where
    F: FnOnce(std::sync::Arc<Session>) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let ep = endpoint.clone();
    let mut client = tokio::task::spawn_blocking(move || ep.client())
        .await
        .map_err(|e| format!("client set-up failed: {e}"))??;
    let (session, event_loop) = endpoint.session(&mut client).await?;
    session.disable_reconnects();
    let events = event_loop.enter();
    tokio::pin!(events);
    // Drive the event loop until the session is up (or fails), then alongside the work.
    let up = tokio::time::timeout(endpoint.timeout, async {
        loop {
            match futures_util::StreamExt::next(&mut events).await {
                Some(Ok(opcua::client::SessionPollResult::Reconnected(_))) => return Ok(()),
                Some(Ok(opcua::client::SessionPollResult::ReconnectFailed(code))) => {
                    return Err(code.sub_code().name().to_string())
                }
                Some(Ok(_)) => {}
                Some(Err(code)) => return Err(code.sub_code().name().to_string()),
                None => return Err("the connection closed".to_string()),
            }
        }
    })
    .await
    .map_err(|_| format!("timeout connecting to {}", endpoint.url))?;
    up.map_err(|e| format!("cannot connect to {}: {e}", endpoint.url))?;
    let result = {
        let work = work(session.clone());
        tokio::pin!(work);
        loop {
            tokio::select! {
                r = &mut work => break r,
                e = futures_util::StreamExt::next(&mut events) => {
                    if matches!(e, None | Some(Err(_))) {
                        break Err(format!("lost the connection to {}", endpoint.url));
                    }
                }
            }
        }
    };
    let close = async {
        let _ = session.disconnect().await;
    };
    let drive = async { while futures_util::StreamExt::next(&mut events).await.is_some() {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        tokio::select! { _ = close => {}, _ = drive => {} }
    })
    .await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_names() {
        assert_eq!(tag_name("Temperature"), "temperature");
        assert_eq!(tag_name("SetPoint 1"), "set_point_1");
        assert_eq!(tag_name("Überdruck"), "berdruck");
        assert_eq!(tag_name("UInt16"), "uint16");
        assert_eq!(tag_name("SByte"), "sbyte");
        assert_eq!(tag_name("---"), "tag");
    }
}
