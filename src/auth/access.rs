//! Who may create an account (`[access]`): registration open or closed, and the email domains
//! a new account's address may be at. Pure logic, no I/O.
//!
//! The policy is asked only when an account is created (`POST /auth/register` and the sign-up
//! page); it never applies to signing in, so closing registration or narrowing the domains
//! leaves existing accounts working.

use crate::config::Registration;
use crate::error::ApiError;

/// The validated `[access]` section; swapped whole by a hot reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    registration: Registration,
    domains: EmailDomains,
}

/// `access.allowed_email_domains`: empty allows any domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct EmailDomains {
    /// Normalised domains an address must be at exactly.
    exact: Vec<String>,
    /// From `*.example.com`: `.example.com` (any subdomain, not the domain itself).
    suffixes: Vec<String>,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        Self {
            registration: Registration::Open,
            domains: EmailDomains::default(),
        }
    }
}

impl AccessPolicy {
    /// Reads `access.allowed_email_domains`; an invalid entry is reported with its index.
    /// Entries are spelled as emails are stored (trimmed, NFKC, lower case), so `Example.COM`
    /// and `example.com` are the same rule, and a trailing dot is dropped.
    pub fn new(registration: Registration, domains: &[String]) -> Result<Self, (usize, String)> {
        let mut parsed = EmailDomains::default();
        for (index, entry) in domains.iter().enumerate() {
            let text = super::input::canonical_text(entry);
            let text = text.strip_suffix('.').unwrap_or(&text);
            let (wildcard, name) = match text.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, text),
            };
            if !is_email_domain(name) {
                return Err((
                    index,
                    format!(
                        "\"{}\" must be a domain (\"example.com\") or a pattern \
                         (\"*.example.com\": its subdomains); no \"@\", scheme, port, path or spaces",
                        entry.trim()
                    ),
                ));
            }
            let list = if wildcard {
                &mut parsed.suffixes
            } else {
                &mut parsed.exact
            };
            let stored = if wildcard {
                format!(".{name}")
            } else {
                name.to_string()
            };
            if !list.contains(&stored) {
                list.push(stored);
            }
        }
        Ok(Self {
            registration,
            domains: parsed,
        })
    }

    pub fn registration_open(&self) -> bool {
        self.registration == Registration::Open
    }

    /// The domains rule in words ("example.com, any subdomain of example.org"), when there is
    /// one: for the sign-up page's hint and the refusal's message.
    pub fn domains_rule(&self) -> Option<String> {
        let EmailDomains { exact, suffixes } = &self.domains;
        if exact.is_empty() && suffixes.is_empty() {
            return None;
        }
        let described: Vec<String> = exact
            .iter()
            .cloned()
            .chain(
                suffixes
                    .iter()
                    .map(|suffix| format!("any subdomain of {}", &suffix[1..])),
            )
            .collect();
        Some(described.join(", "))
    }

    /// Whether a new account may be created for `email` (already normalised by
    /// [`super::input::normalize_email`]).
    pub fn check_registration(&self, email: &str) -> Result<(), ApiError> {
        if !self.registration_open() {
            return Err(ApiError::RegistrationClosed);
        }
        let Some(rule) = self.domains_rule() else {
            return Ok(());
        };
        let domain = email.rsplit_once('@').map_or("", |(_, domain)| domain);
        let allowed = self.domains.exact.iter().any(|exact| exact == domain)
            || self
                .domains
                .suffixes
                .iter()
                .any(|suffix| domain.ends_with(suffix.as_str()));
        if allowed {
            Ok(())
        } else {
            Err(ApiError::EmailDomainNotAllowed(rule))
        }
    }
}

/// At least two dot-separated labels of letters (any script, as addresses may hold them),
/// digits and inner hyphens: what the domain of an address that passes `normalize_email`
/// can be, so that a rule which could never match is refused rather than kept.
fn is_email_domain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').count() >= 2
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(domains: &[&str]) -> AccessPolicy {
        let domains: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
        AccessPolicy::new(Registration::Open, &domains).expect("valid domains")
    }

    #[test]
    fn no_domains_allow_any_address() {
        assert!(policy(&[]).check_registration("a@anything.example").is_ok());
        assert_eq!(policy(&[]).domains_rule(), None);
    }

    #[test]
    fn listed_domains_match_exactly_and_patterns_match_subdomains() {
        let policy = policy(&[" Example.COM ", "*.corp.example.org", "example.com."]);
        assert!(policy.check_registration("ann@example.com").is_ok());
        assert!(policy.check_registration("bob@eu.corp.example.org").is_ok());
        assert!(policy
            .check_registration("bob@a.b.corp.example.org")
            .is_ok());
        for refused in [
            "eve@corp.example.org",
            "eve@sub.example.com",
            "eve@example.com.evil.net",
            "eve@notexample.com",
            "eve@evilcorp.example.org",
        ] {
            match policy.check_registration(refused) {
                Err(error @ ApiError::EmailDomainNotAllowed(_)) => assert_eq!(
                    error.message(),
                    "registration is limited to email addresses at example.com, any \
                     subdomain of corp.example.org"
                ),
                other => panic!("{refused}: {other:?}"),
            }
        }
    }

    #[test]
    fn closed_registration_refuses_everyone() {
        let closed = AccessPolicy::new(Registration::Closed, &[]).unwrap();
        assert!(!closed.registration_open());
        assert!(matches!(
            closed.check_registration("a@example.com"),
            Err(ApiError::RegistrationClosed)
        ));
    }

    #[test]
    fn junk_entries_are_refused_with_their_index() {
        for bad in [
            "@example.com",
            "user@example.com",
            "example com",
            "com",
            "*",
            "*.com",
            "",
            "https://example.com",
            "example.com:25",
            "example.com/x",
            "-example.com",
            "example..com",
            "**.example.com",
        ] {
            let entries = vec!["ok.example".to_string(), bad.to_string()];
            match AccessPolicy::new(Registration::Open, &entries) {
                Err((1, _)) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(AccessPolicy::new(Registration::Open, &["bücher.example".to_string()]).is_ok());
    }
}
