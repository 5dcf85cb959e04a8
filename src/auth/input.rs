//! Request bodies of the `/auth` API: JSON objects, or form posts from the built-in pages,
//! read into one field map; and the validation rules for each field. Every rejection is an
//! [`ApiError::InvalidRequest`] whose message names the field.

use serde_json::{Map, Value};
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

use crate::error::ApiError;

pub const MAX_EMAIL_LEN: usize = 254;
/// bcrypt only looks at the first 72 bytes; longer passwords would silently be truncated.
pub const MAX_PASSWORD_BYTES: usize = 72;
const MAX_USERNAME_LEN: usize = 50;
const MAX_FULL_NAME_LEN: usize = 100;

pub struct Fields(Map<String, Value>);

impl Fields {
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Fields, ApiError> {
        let media_type = content_type
            .and_then(|value| value.split(';').next())
            .map(|value| value.trim().to_ascii_lowercase());
        match media_type.as_deref() {
            Some("application/json") => parse_json(body),
            Some("application/x-www-form-urlencoded") => Ok(parse_form(body)),
            _ => Err(ApiError::UnsupportedMediaType),
        }
    }

    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.optional(name)?
            .ok_or_else(|| invalid(format!("{name} is required")))
    }

    pub fn optional(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => {
                // Surrounding whitespace (tabs, newlines) is trimmed by the field rules later;
                // control characters inside a value are refused.
                if text.trim().chars().any(|c| c.is_control()) {
                    return Err(invalid(format!(
                        "{name} must not contain control characters"
                    )));
                }
                Ok(Some(text))
            }
            Some(_) => Err(invalid(format!("{name} must be a string"))),
        }
    }
}

fn invalid(message: String) -> ApiError {
    ApiError::InvalidRequest(message)
}

fn parse_json(body: &[u8]) -> Result<Fields, ApiError> {
    if body.is_empty() {
        return Err(invalid(
            "request body is empty; send a JSON object".to_string(),
        ));
    }
    // serde_json caps nesting depth (128), so a nesting bomb is a parse error, not a crash.
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(Fields(map)),
        Ok(_) => Err(invalid("request body must be a JSON object".to_string())),
        Err(error) => Err(invalid(format!(
            "request body is not valid JSON ({})",
            error.classify_name()
        ))),
    }
}

fn parse_form(body: &[u8]) -> Fields {
    let map = form_urlencoded::parse(body)
        .map(|(key, value)| (key.into_owned(), Value::String(value.into_owned())))
        .collect();
    Fields(map)
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "unexpected end of input",
        }
    }
}

/// The one spelling of an email address that is stored, compared and counted: trimmed,
/// NFKC-normalised (so a full-width or other compatibility look-alike of an address *is* that
/// address) and lower-cased, then checked for shape. Invisible and control characters are
/// refused rather than dropped (see [`is_invisible`]), before and after normalisation.
pub fn normalize_email(raw: &str) -> Result<String, ApiError> {
    let trimmed = raw.trim();
    if let Some(c) = trimmed.chars().find(|&c| is_invisible(c)) {
        return Err(invisible(c));
    }
    let email = canonical_text(trimmed);
    if let Some(c) = email.chars().find(|&c| is_invisible(c)) {
        return Err(invisible(c));
    }
    if email.is_empty() {
        return Err(invalid("email is required".to_string()));
    }
    if email.len() > MAX_EMAIL_LEN {
        return Err(invalid(format!(
            "email must be at most {MAX_EMAIL_LEN} characters"
        )));
    }
    let shape_ok = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local.len() <= 64
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
                && !domain.contains('@')
        }
        None => false,
    };
    let characters_ok = email
        .chars()
        .all(|c| !c.is_whitespace() && !c.is_control() && !"<>()[]\\,;:\"".contains(c));
    if !(shape_ok && characters_ok) {
        return Err(invalid("email is not a valid email address".to_string()));
    }
    Ok(email)
}

/// NFKC, then lower case, repeated until neither changes the text (lower-casing can leave
/// text that NFKC would change again, and NFKC can produce upper-case letters, e.g. from
/// modifier letters); at most a few rounds in practice.
pub(crate) fn canonical_text(text: &str) -> String {
    let mut current: String = text.nfkc().collect::<String>().trim().to_string();
    for _ in 0..4 {
        let next: String = current.to_lowercase().nfkc().collect();
        if next == current {
            break;
        }
        current = next;
    }
    current
}

/// Characters an email must not contain because they are invisible or control characters: a
/// second, different-looking-the-same spelling of an address, or text that reorders what is
/// shown. Everything in general category C (Cc controls, Cf format characters such as the
/// zero-width space, joiners, word joiner, BOM, soft hyphen and every bidi control, Cs, Co
/// private use, Cn unassigned), plus the other default-ignorable or blank-looking code points
/// that are letters or marks: the combining grapheme joiner, the Hangul fillers, the Khmer
/// inherent vowels, the Mongolian free variation selectors, the variation selectors and the
/// Braille blank.
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || c.general_category_group() == GeneralCategoryGroup::Other
        || matches!(
            c,
            '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FFA0}'
                | '\u{E0100}'..='\u{E01EF}'
        )
}

fn invisible(c: char) -> ApiError {
    invalid(format!(
        "email must not contain invisible or control characters (found U+{:04X})",
        u32::from(c)
    ))
}

pub fn check_new_password(password: &str, email: &str, min_length: usize) -> Result<(), ApiError> {
    if password.chars().count() < min_length {
        return Err(invalid(format!(
            "password must be at least {min_length} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(invalid(format!(
            "password must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    if canonical_text(password.trim()) == email {
        return Err(invalid(
            "password must not be the email address".to_string(),
        ));
    }
    Ok(())
}

pub fn check_username(username: &str) -> Result<String, ApiError> {
    let username = username.trim();
    let ok = (3..=MAX_USERNAME_LEN).contains(&username.chars().count())
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        return Err(invalid(format!(
            "username must be 3 to {MAX_USERNAME_LEN} letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(username.to_string())
}

pub fn check_full_name(full_name: &str) -> Result<String, ApiError> {
    let full_name = full_name.trim();
    if full_name.chars().count() > MAX_FULL_NAME_LEN {
        return Err(invalid(format!(
            "full_name must be at most {MAX_FULL_NAME_LEN} characters"
        )));
    }
    Ok(full_name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(error: ApiError) -> String {
        match error {
            ApiError::InvalidRequest(message) => message,
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn emails_are_normalised() {
        assert_eq!(
            normalize_email("  Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
    }

    #[test]
    fn compatibility_look_alikes_are_the_same_address() {
        for (spelling, canonical) in [
            // Full-width letters and at sign.
            ("ａｌｉｃｅ@ｅｘａｍｐｌｅ.ｃｏｍ", "alice@example.com"),
            ("ＡＬＩＣＥ＠ＥＸＡＭＰＬＥ．ＣＯＭ", "alice@example.com"),
            // Ligatures.
            ("ﬁnn@example.com", "finn@example.com"),
            ("oﬀice@example.com", "office@example.com"),
            // Mathematical alphanumerics, circled and superscript letters.
            ("𝐚𝐥𝐢𝐜𝐞@example.com", "alice@example.com"),
            ("𝔞𝔩𝔦𝔠𝔢@example.com", "alice@example.com"),
            ("ⓐlice@example.com", "alice@example.com"),
            ("ᵃlice@example.com", "alice@example.com"),
            // Modifier capital letter: NFKC gives "A", which must still be lower-cased.
            ("ᴬlice@example.com", "alice@example.com"),
            // Kelvin sign, Roman numeral, long s.
            ("\u{212A}ate@example.com", "kate@example.com"),
            ("\u{2163}@example.com", "iv@example.com"),
            ("ſam@example.com", "sam@example.com"),
            // Decomposed accents are composed; upper-case accented letters lower-cased.
            ("Jose\u{0301}@example.com", "jos\u{00E9}@example.com"),
            ("JOSÉ@EXAMPLE.COM", "jos\u{00E9}@example.com"),
            // Compatibility spaces around the address are trimmed.
            ("\u{3000}alice@example.com\u{00A0}", "alice@example.com"),
        ] {
            assert_eq!(
                normalize_email(spelling).unwrap(),
                canonical,
                "{spelling:?}"
            );
        }
    }

    #[test]
    fn normalisation_is_idempotent() {
        for sample in [
            "ａｌｉｃｅ@ｅｘａｍｐｌｅ.ｃｏｍ",
            "İstanbul@example.com",
            "ẞtraße@example.de",
            "\u{2126}mega@example.com",
            "ǅemal@example.com",
            "ᴬᴮᶜ@example.com",
            "ﬃ@example.com",
        ] {
            let once = normalize_email(sample).unwrap();
            assert_eq!(normalize_email(&once).unwrap(), once, "{sample:?}");
            assert!(unicode_normalization::is_nfkc(&once), "{sample:?}");
            assert_eq!(once.to_lowercase(), once, "{sample:?}");
        }
    }

    #[test]
    fn invisible_and_control_characters_are_refused() {
        for c in [
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{2060}',
            '\u{2061}',
            '\u{2062}',
            '\u{2063}',
            '\u{2064}',
            '\u{FEFF}',
            '\u{200E}',
            '\u{200F}',
            '\u{202A}',
            '\u{202B}',
            '\u{202C}',
            '\u{202D}',
            '\u{202E}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{061C}',
            '\u{00AD}',
            '\u{034F}',
            '\u{115F}',
            '\u{1160}',
            '\u{3164}',
            '\u{FFA0}',
            '\u{180E}',
            '\u{180B}',
            '\u{FE0F}',
            '\u{FE00}',
            '\u{E0100}',
            '\u{E0041}',
            '\u{E0001}',
            '\u{17B4}',
            '\u{2800}',
            '\u{1D173}',
            '\u{FFF9}',
            '\u{0000}',
            '\u{0007}',
            '\u{007F}',
            '\u{0085}',
            '\u{E000}',
            '\u{F0000}',
            '\u{0378}',
        ] {
            let mut spellings = vec![
                format!("al{c}ice@example.com"),
                format!("alice@exam{c}ple.com"),
            ];
            // Surrounding whitespace (tab, newline, U+0085...) is trimmed, as everywhere.
            if !c.is_whitespace() {
                spellings.push(format!("{c}alice@example.com"));
                spellings.push(format!("alice@example.com{c}"));
            }
            for spelling in spellings {
                let error = normalize_email(&spelling)
                    .expect_err(&format!("U+{:04X} accepted", u32::from(c)));
                let message = message(error);
                assert!(message.starts_with("email"), "{message}");
            }
        }
        // A full-width form of a refused character is refused too (NFKC maps U+FFA0 to U+3164).
        assert!(normalize_email("a\u{FFA0}@example.com").is_err());
    }

    #[test]
    fn a_password_spelling_the_email_is_refused_in_any_compatibility_form() {
        assert!(
            check_new_password("ａｌｉｃｅ@ｅｘａｍｐｌｅ.ｃｏｍ", "alice@example.com", 8).is_err()
        );
    }

    #[test]
    fn bad_emails_name_the_field() {
        for bad in [
            "",
            "no-at-sign",
            "a@b",
            "@example.com",
            "a@@example.com",
            "a b@example.com",
            "a@example..com",
        ] {
            let error = normalize_email(bad).expect_err(bad);
            assert!(message(error).contains("email"), "{bad}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(normalize_email(&long).is_err());
    }

    #[test]
    fn password_rules() {
        assert!(check_new_password("short", "a@b.co", 8).is_err());
        assert!(check_new_password(&"x".repeat(73), "a@b.co", 8).is_err());
        assert!(check_new_password("Alice@Example.com", "alice@example.com", 8).is_err());
        assert!(check_new_password("correct horse", "a@b.co", 8).is_ok());
    }

    #[test]
    fn fields_reject_wrong_types_and_control_characters() {
        let fields = Fields::parse(
            Some("application/json"),
            br#"{"email": 5, "name": "a\u0000b"}"#,
        )
        .unwrap();
        assert!(message(fields.required("email").unwrap_err()).contains("email must be a string"));
        assert!(message(fields.optional("name").unwrap_err()).contains("name"));
        assert!(message(fields.required("password").unwrap_err()).contains("password is required"));
    }

    #[test]
    fn bodies_must_be_json_objects_of_a_known_type() {
        assert!(matches!(
            Fields::parse(Some("text/plain"), b"{}"),
            Err(ApiError::UnsupportedMediaType)
        ));
        assert!(matches!(
            Fields::parse(None, b"{}"),
            Err(ApiError::UnsupportedMediaType)
        ));
        assert!(Fields::parse(Some("application/json"), b"[1]").is_err());
        assert!(Fields::parse(Some("application/json"), b"{\"a\":").is_err());
        assert!(Fields::parse(Some("application/json"), &[0xff, 0xfe]).is_err());
        let bomb = "[".repeat(10_000);
        assert!(Fields::parse(Some("application/json"), bomb.as_bytes()).is_err());
        let form = Fields::parse(
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            b"email=a%40b.co&password=x",
        )
        .unwrap();
        assert_eq!(form.required("email").unwrap(), "a@b.co");
    }
}
