//! The declarations against the interface description in `dbus/*.xml`.

use super::*;

const MANAGER_XML: &str = include_str!("../../dbus/io.github.matrix_linkd.Linkd1.Manager.xml");
const FLOW_XML: &str = include_str!("../../dbus/io.github.matrix_linkd.Linkd1.Flow.xml");

/// The values of `<tag name="…"` in `xml`.
fn names<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag} name=\"");
    xml.split(open.as_str()).skip(1).map(|rest| &rest[..rest.find('"').unwrap()]).collect()
}

/// The text of `xml` from `start` up to the next `end`, on one line.
fn between(xml: &str, start: &str, end: &str) -> String {
    let from = &xml[xml.find(start).unwrap_or_else(|| panic!("{start:?} is not in the XML")) + start.len()..];
    from[..from.find(end).unwrap()].split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `SignedOut` -> `signed out`.
fn words(debug: impl fmt::Debug) -> String {
    let mut out = String::new();
    for c in format!("{debug:?}").chars() {
        if c.is_uppercase() && !out.is_empty() {
            out.push(' ');
        }
        out.extend(c.to_lowercase());
    }
    out
}

#[test]
fn names_are_the_xml_names() {
    assert_eq!(names(MANAGER_XML, "interface"), [MANAGER_INTERFACE]);
    assert_eq!(names(FLOW_XML, "interface"), [FLOW_INTERFACE]);
    assert!(MANAGER_XML.contains(&format!("Bus name:    {BUS_NAME} ")));
    assert!(MANAGER_XML.contains(&format!("Object path: {MANAGER_PATH}\n")));
    let pattern = format!("{FLOW_PATH_PREFIX}/<SENDER>/<TOKEN>");
    assert!(MANAGER_XML.contains(&pattern) && FLOW_XML.contains(&pattern));
    assert_eq!(
        ERROR_PREFIX,
        format!("{}.", between(MANAGER_XML, "error replies named ", "<Name>").trim_end_matches('.'))
    );
    assert!(MANAGER_XML.contains(&format!("version of this interface, {INTERFACE_VERSION}.")));
    assert!(MANAGER_XML.contains(&format!("\"{}\"", properties::VERSION)));
    assert!(FLOW_XML.contains(&format!("<signal name=\"{RESPONSE_SIGNAL}\">")));
}

#[test]
fn flow_path_is_the_daemons() {
    assert_eq!(flow_path(":1.42", "t1"), "/io/github/matrix_linkd/Linkd1/flow/1_42/t1");
    assert_eq!(flow_sender(":1.42"), "1_42");
    assert_eq!(sender_of("/io/github/matrix_linkd/Linkd1/flow/1_42/t1"), Some("1_42"));
    assert_eq!(sender_of("/io/github/matrix_linkd/Linkd1/flow/1_42"), Some("1_42"));
    assert_eq!(sender_of("/io/github/matrix_linkd/Linkd1/flow"), None);
    assert_eq!(sender_of("/io/github/matrix_linkd/Linkd1/flowx/1_42"), None);
}

#[test]
fn error_names_are_the_xml_list() {
    let listed = between(MANAGER_XML, "<Name>:", ".\n");
    let listed: Vec<&str> = listed.split(", ").collect();
    let ours: Vec<&str> = errors::ALL.iter().map(|n| errors::short_name(n).unwrap()).collect();
    assert_eq!(ours, listed);
    for name in errors::ALL {
        assert!(name.starts_with(ERROR_PREFIX), "{name}");
    }
    assert!(MANAGER_XML.contains(errors::INVALID_ARGS) && MANAGER_XML.contains(errors::ACCESS_DENIED));
    assert!(FLOW_XML.contains(errors::UNKNOWN_OBJECT));
    assert_eq!(errors::short_name(errors::BUSY), Some("Busy"));
    assert_eq!(errors::short_name(errors::INVALID_ARGS), None);
}

#[test]
fn properties_are_the_xml_properties() {
    assert_eq!(names(MANAGER_XML, "property"), properties::MANAGER);
    assert_eq!(names(FLOW_XML, "property"), properties::FLOW);
}

#[test]
fn flow_states_are_the_xml_values() {
    let listed = between(FLOW_XML, "State values: ", ".\n");
    let ours: Vec<String> = FlowState::ALL.iter().map(|s| format!("{} {s:?}", *s as u32)).collect();
    assert_eq!(listed, ours.join(", "));
    for s in FlowState::ALL {
        assert_eq!(FlowState::from_u32(s as u32), s);
        assert_eq!(s.is_final(), s as u32 >= 8);
    }
    assert_eq!(FlowState::from_u32(11), FlowState::Unknown);
    assert!(FLOW_XML.contains("Clients must read unknown future values as 0."));
}

#[test]
fn session_states_are_the_xml_values() {
    let listed = between(MANAGER_XML, "<!-- SessionState: ", " (e.g.");
    let ours: Vec<String> = SessionState::ALL.iter().map(|s| format!("{} {}", *s as u32, words(s))).collect();
    assert_eq!(listed, ours.join(", "));
    for s in SessionState::ALL {
        assert_eq!(SessionState::from_u32(s as u32), s);
    }
    assert_eq!(SessionState::from_u32(5), SessionState::Unknown);
    assert_eq!(SessionState::default(), SessionState::Unknown);
}

#[test]
fn kinds_and_protocols_are_the_xml_values() {
    let kinds = between(FLOW_XML, "<!-- Kind: ", "-->");
    for k in [FlowKind::Grant, FlowKind::Login, FlowKind::Delegation] {
        assert!(kinds.contains(&format!("{} {} (", k as u32, words(k))), "{k:?} in {kinds}");
        assert_eq!(FlowKind::from_u32(k as u32), k);
    }
    assert_eq!(FlowKind::from_u32(0), FlowKind::Unknown);
    assert_eq!(FlowKind::from_u32(4), FlowKind::Unknown);

    let protocols = between(FLOW_XML, "<!-- Protocol: ", "-->");
    assert!(protocols.contains(&format!("{} = 2024", WireProtocol::V2024 as u32)), "{protocols}");
    assert!(
        protocols.contains(&format!("{} = latest (MSC4388", WireProtocol::Msc4388 as u32)),
        "{protocols}"
    );
    assert!(protocols.contains(&format!("{} for a delegation", WireProtocol::None as u32)), "{protocols}");
    for p in WireProtocol::ALL {
        assert_eq!(WireProtocol::from_u32(p as u32), Some(p));
    }
    assert_eq!(WireProtocol::try_from(3), Err(UnknownValue { what: "WireProtocol", value: 3 }));
}

#[test]
fn response_codes_are_the_xml_values() {
    let codes = format!(
        "@response: {} success, {} cancelled, {} failed.",
        response::SUCCESS,
        response::CANCELLED,
        response::FAILED
    );
    assert!(FLOW_XML.contains(&codes));
}

#[test]
fn option_keys_are_in_the_xml() {
    // Each key starts a line of an `@options` list, followed by its type.
    let keys: Vec<&str> = MANAGER_XML
        .lines()
        .map(str::split_whitespace)
        .filter_map(|mut w| Some((w.next()?, w.next()?)))
        .filter(|(_, ty)| ["s", "b", "ay"].contains(ty))
        .map(|(key, _)| key)
        .collect();
    for key in [
        options::HANDLE_TOKEN,
        options::QR_CODE,
        options::DETACHED,
        options::NOTIFY,
        options::OPEN_URI,
        options::PROTOCOL,
        options::HOMESERVER,
        options::DEVICE_DISPLAY_NAME,
        options::CLIENT_NAME,
        options::SHARE_SECRETS,
    ] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
    assert!(MANAGER_XML.contains(&format!("1 to {} of [A-Za-z0-9_]", options::MAX_HANDLE_TOKEN)));
    for value in [options::PROTOCOL_AUTO, options::PROTOCOL_2024, options::PROTOCOL_LATEST] {
        assert!(MANAGER_XML.contains(&format!("\"{value}\"")), "{value}");
    }
}

#[test]
fn result_keys_and_values_are_in_the_xml() {
    let response = between(FLOW_XML, "@results: success:", "Sent once");
    for key in [
        results::USER_ID,
        results::DEVICE_ID,
        results::ERROR,
        results::MESSAGE,
        results::HOMESERVER_FOUND,
        results::TRUST,
    ] {
        assert!(response.contains(&format!("`{key}` s")), "{key} in {response}");
    }
    for value in [
        results::homeserver_found::URL,
        results::homeserver_found::WELL_KNOWN,
        results::homeserver_found::SERVER_NAME,
        results::homeserver_found::RENDEZVOUS_SERVER,
        results::trust::SECRETS_SHARED,
        results::trust::SIGNED_BY_DAEMON,
    ] {
        assert!(response.contains(&format!("\"{value}\"")), "{value} in {response}");
    }
}

#[test]
fn capabilities_formats_and_revocations_are_in_the_xml() {
    let caps = between(MANAGER_XML, "<!-- Capabilities:", "-->");
    for cap in [
        capabilities::LOGIN,
        capabilities::GRANT,
        capabilities::DELEGATE,
        capabilities::PROTOCOL_2024,
        capabilities::PROTOCOL_MSC4388,
    ] {
        assert!(caps.contains(&format!("`{cap}`")), "{cap} in {caps}");
    }
    let formats = between(FLOW_XML, "@format:", "@qr_code");
    for f in [qr_formats::RAW, qr_formats::PNG, qr_formats::SVG, qr_formats::UTF8] {
        assert!(formats.contains(&format!("`{f}`")), "{f} in {formats}");
    }
    let how = between(MANAGER_XML, "@how:", "Errors:");
    for h in [revoke::REVOKED, revoke::ACCOUNT_PAGE] {
        assert!(how.contains(&format!("\"{h}\"")), "{h} in {how}");
    }
}
