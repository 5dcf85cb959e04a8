//! Who a route serves: its allow list (`allow = [...]` on a `[[route]]`), and the role names
//! that lists, `authgate user set-role` and the session store share.
//!
//! An entry is an exact email (`bob@partner.org`), every address of a domain (`*@example.com`,
//! the domain itself only, not its subdomains) or a role (`role:admin`). A signed-in user
//! matching any entry is served; one matching none gets 403. A route without `allow` serves
//! every signed-in user. Emails and domains are normalised as sign-up normalises addresses
//! (trimmed, Unicode NFKC, lower-case), so an entry matches however the operator typed it.
//!
//! authgate never sends mail, so an address is whatever the user typed at sign-up: email and
//! `*@domain` entries are only as strong as the registration policy (`[access]`). With open
//! registration anyone can sign up as `bob@partner.org` before Bob does; use roles, or close
//! registration and create accounts with `authgate user add`.

use crate::auth::input::normalize_email;

/// The longest role name.
pub const MAX_ROLE_LEN: usize = 64;

/// A route's allow list, parsed and normalised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    emails: Vec<String>,
    domains: Vec<String>,
    roles: Vec<String>,
}

impl AllowList {
    /// Parses the entries; on a bad one, its index and what is wrong with it.
    pub fn parse(entries: &[String]) -> Result<AllowList, (usize, String)> {
        if entries.is_empty() {
            return Err((
                0,
                "an empty list would refuse every user: list emails, *@domain or role:NAME \
                 entries, or leave allow out to serve every signed-in user"
                    .to_string(),
            ));
        }
        let mut list = AllowList::default();
        for (index, entry) in entries.iter().enumerate() {
            let entry = entry.trim();
            let problem = |message: String| (index, format!("\"{entry}\": {message}"));
            if let Some(role) = entry.strip_prefix("role:") {
                list.roles.push(normalize_role(role).map_err(problem)?);
            } else if let Some(domain) = entry.strip_prefix("*@") {
                list.domains
                    .push(normalize_domain(domain).map_err(problem)?);
            } else if entry.contains('*') || entry.starts_with('@') {
                return Err(problem(
                    "write *@example.com for every address of a domain (no other wildcards)"
                        .to_string(),
                ));
            } else {
                let email = normalize_email(entry).map_err(|error| {
                    problem(format!("not an email address ({})", error.message()))
                })?;
                list.emails.push(email);
            }
        }
        Ok(list)
    }

    /// Whether it names users by address (emails or `*@domain`), which only the registration
    /// policy vouches for.
    pub fn names_addresses(&self) -> bool {
        !(self.emails.is_empty() && self.domains.is_empty())
    }

    /// Whether a user with this (normalised) email and these roles is served.
    pub fn permits(&self, email: &str, roles: &[String]) -> bool {
        self.emails.iter().any(|allowed| allowed == email)
            || email
                .rsplit_once('@')
                .is_some_and(|(_, domain)| self.domains.iter().any(|allowed| allowed == domain))
            || roles.iter().any(|role| self.roles.contains(role))
    }
}

/// A role name as stored and compared: trimmed and lower-cased, 1 to [`MAX_ROLE_LEN`]
/// characters of `a-z 0-9 _ . -` (so a list of roles joins with commas unambiguously).
pub fn normalize_role(raw: &str) -> Result<String, String> {
    let role = raw.trim().to_ascii_lowercase();
    if role.is_empty() {
        return Err("a role name must not be empty".to_string());
    }
    if role.len() > MAX_ROLE_LEN {
        return Err(format!(
            "a role name must be at most {MAX_ROLE_LEN} characters"
        ));
    }
    if let Some(bad) = role
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "a role name may hold only letters a-z, digits, '_', '.' and '-' (found {bad:?})"
        ));
    }
    Ok(role)
}

/// A domain as the domain part of a normalised email.
fn normalize_domain(raw: &str) -> Result<String, String> {
    if raw.contains('*') {
        return Err(
            "*@domain matches that domain only; list each subdomain as its own *@ entry"
                .to_string(),
        );
    }
    let email = normalize_email(&format!("x@{}", raw.trim()))
        .map_err(|error| format!("not a domain ({})", error.message()))?;
    Ok(email
        .rsplit_once('@')
        .map(|(_, domain)| domain.to_string())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Result<AllowList, (usize, String)> {
        AllowList::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn emails_domains_and_roles_match_as_normalised() {
        let allow = list(&[" Bob@Partner.org ", "*@Example.COM", "role:Admin"]).unwrap();
        let none: &[String] = &[];
        assert!(allow.permits("bob@partner.org", none));
        assert!(allow.permits("alice@example.com", none));
        assert!(
            !allow.permits("alice@sub.example.com", none),
            "not subdomains"
        );
        assert!(!allow.permits("alice@example.com.evil.org", none));
        assert!(!allow.permits("bob@partner.org.evil", none));
        assert!(!allow.permits("eve@other.org", none));
        assert!(allow.permits("eve@other.org", &["admin".to_string()]));
        assert!(!allow.permits("eve@other.org", &["administrator".to_string()]));
    }

    #[test]
    fn bad_entries_are_named() {
        assert_eq!(list(&[]).unwrap_err().0, 0);
        for (entries, index) in [
            (&["a@b.com", "role:"][..], 1),
            (&["role:a,b"][..], 0),
            (&["*.example.com"][..], 0),
            (&["@example.com"][..], 0),
            (&["*@*.example.com"][..], 0),
            (&["not-an-email"][..], 0),
            (&["ok@x.org", "*@"][..], 1),
        ] {
            let (at, message) = list(entries).unwrap_err();
            assert_eq!(at, index, "{entries:?}: {message}");
        }
    }

    #[test]
    fn role_names_are_lower_case_and_plain() {
        assert_eq!(normalize_role(" Ops.Team-1 ").unwrap(), "ops.team-1");
        assert!(normalize_role("a b").is_err());
        assert!(normalize_role("a,b").is_err());
        assert!(normalize_role(&"r".repeat(65)).is_err());
    }
}
