//! Human labels for user agents ("Firefox 128 on Linux"), for the device list. Parsing uses
//! woothee's maintained pattern set; an unrecognised agent keeps a generic label.

use sha2::{Digest, Sha256};

pub fn label(user_agent: &str) -> String {
    if user_agent.trim().is_empty() {
        return "Unknown device".to_string();
    }
    let Some(parsed) = woothee::parser::Parser::new().parse(user_agent) else {
        return "Unknown device".to_string();
    };
    let known = |value: &str| !value.is_empty() && value != woothee::woothee::VALUE_UNKNOWN;
    let major = parsed.version.split('.').next().unwrap_or("");
    let browser = match (known(parsed.name), known(major)) {
        (true, true) => format!("{} {major}", parsed.name),
        (true, false) => parsed.name.to_string(),
        _ => "Unknown browser".to_string(),
    };
    if known(parsed.os) {
        format!("{browser} on {}", parsed.os)
    } else {
        browser
    }
}

/// The key that makes a device unique per user (user agents can be long).
pub fn user_agent_hash(user_agent: &str) -> String {
    hex::encode(Sha256::digest(user_agent.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_browsers_get_readable_labels() {
        let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
        assert_eq!(label(firefox), "Firefox 128 on Linux");
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        assert!(
            label(chrome).starts_with("Chrome 120 on Windows"),
            "{}",
            label(chrome)
        );
    }

    #[test]
    fn unknown_agents_get_a_generic_label() {
        assert_eq!(label(""), "Unknown device");
        assert!(!label("curl/8.5.0").is_empty());
    }
}
