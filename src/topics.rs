//! The local topic scheme of SPEC §4, in one place: where a device's readings, availability,
//! commands and counters are published. Every part of the daemon builds these topics here, so
//! a reader looking for "where does `devices/boiler/temperature` come from" finds one home.
//!
//! ```text
//! devices/<device>/<tag>                 a reading (JSON, SPEC §4.1)
//! devices/<device>/$status               availability (retained)
//! devices/<device>/<tag>/set             a command to a writable tag
//! devices/<device>/<tag>/set/result      the command's result
//! $SYS/tidegate/devices/<device>/<key>   a driver's counters (retained)
//! ```

/// Every topic under `devices/`.
pub const ALL_DEVICES: &str = "devices/#";
/// Every command to every device (the default ACL keeps it from anonymous clients).
pub const ALL_COMMANDS: &str = "devices/+/+/set";

/// `devices/<device>/<tag>`: a tag's readings.
pub fn reading(device: &str, tag: &str) -> String {
    format!("devices/{device}/{tag}")
}

/// `devices/<device>/$status`: the device's availability.
pub fn status(device: &str) -> String {
    format!("devices/{device}/$status")
}

/// `devices/<device>/<tag>/set`: a command to the tag.
pub fn command(device: &str, tag: &str) -> String {
    format!("devices/{device}/{tag}/set")
}

/// `devices/<device>/+/set`: every command to the device (what its task subscribes to).
pub fn commands_of(device: &str) -> String {
    format!("devices/{device}/+/set")
}

/// `devices/<device>/<tag>/set/result`: the result of a command to the tag.
pub fn command_result(device: &str, tag: &str) -> String {
    format!("devices/{device}/{tag}/set/result")
}

/// `devices/<device>/#`: everything the device publishes.
pub fn device_all(device: &str) -> String {
    format!("devices/{device}/#")
}

/// `$SYS/tidegate/devices/<device>/<key>`: one of the driver's counters.
pub fn counter(device: &str, key: &str) -> String {
    format!("$SYS/tidegate/devices/{device}/{key}")
}

/// `$SYS/tidegate/devices/<device>/#`: all of the driver's counters.
pub fn counters_of(device: &str) -> String {
    format!("$SYS/tidegate/devices/{device}/#")
}

/// The tag a command topic (`devices/<device>/<tag>/set`) is for.
pub fn command_tag(topic: &str) -> Option<&str> {
    let mut parts = topic.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("devices"), Some(_), Some(tag), Some("set"), None) => Some(tag),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme() {
        assert_eq!(reading("boiler", "temp"), "devices/boiler/temp");
        assert_eq!(status("boiler"), "devices/boiler/$status");
        assert_eq!(command("boiler", "sp"), "devices/boiler/sp/set");
        assert_eq!(
            command_result("boiler", "sp"),
            "devices/boiler/sp/set/result"
        );
        assert_eq!(
            counter("boiler", "polls"),
            "$SYS/tidegate/devices/boiler/polls"
        );
        assert_eq!(command_tag("devices/boiler/sp/set"), Some("sp"));
        assert_eq!(command_tag("devices/boiler/sp/set/result"), None);
        assert_eq!(command_tag("devices/boiler/sp"), None);
    }
}
