//! Group names as people see them (docs/api/http.md "The group"): two names that render the same are the
//! same name. A name is stored NFC-normalised, so "Café" typed with a combining accent
//! and with a precomposed é are one string; uniqueness compares the full Unicode case
//! folding of that (so "Straße" and "STRASSE" collide, which `to_lowercase` misses); and
//! a name is refused when it holds bidirectional controls (`invoice\u{202E}txt.exe`
//! renders as "invoiceexe.txt") or nothing visible (a lone U+200B). Unicode's data
//! comes from `unicode-normalization` and `caseless` (the unicode-rs and Servo crates);
//! the two small character sets below are from the Unicode standard itself.
//!
//! Also the userName rule ([`valid_user_name`]), which auth, the failed-login table
//! and user management share.

use caseless::Caseless;
use unicode_normalization::UnicodeNormalization;

/// A user name is 1–64 of `A-Z a-z 0-9 . _ @ -` (docs/api/http.md "Authentication"); accounts follow the same rule.
pub fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// The stored form of a name: NFC.
pub fn normalize(name: &str) -> String {
    name.nfc().collect()
}

/// The form two names are compared in for uniqueness and the `name` filter: the full
/// case folding of the NFC form, normalised again (folding can denormalise:
/// U+0130 folds to "i" + U+0307).
pub fn fold(name: &str) -> String {
    name.nfc().default_case_fold().nfc().collect()
}

/// Why a name (already trimmed) is refused under the rules of this section, if it is.
pub fn check(name: &str) -> Result<(), &'static str> {
    if name.chars().any(is_bidi_control) {
        return Err("name must not contain bidirectional control characters");
    }
    if !name.chars().any(is_visible) {
        return Err("name must contain a visible character");
    }
    Ok(())
}

/// The explicit bidirectional formatting characters (UAX #9 §2): embeddings,
/// overrides, isolates and the implicit marks.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Whether `c` draws something: not white space, not a control and not a default
/// ignorable code point (DerivedCoreProperties.txt: zero-width characters, joiners,
/// variation selectors, fillers, tags), nor the blank Braille pattern.
fn is_visible(c: char) -> bool {
    !(c.is_whitespace() || c.is_control() || is_default_ignorable(c) || c == '\u{2800}')
}

fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_render_the_same_fold_the_same() {
        assert_eq!(fold("Cafe\u{0301}"), fold("Café"));
        assert_eq!(normalize("Cafe\u{0301}"), "Café");
        assert_eq!(fold("Straße"), fold("STRASSE"));
        assert_eq!(fold("ΣΊΣΥΦΟΣ"), fold("σίσυφος"));
        assert_eq!(fold("Trucks ÄÖ"), fold("TRUCKS äö"));
        assert_eq!(fold("İstanbul"), fold("i\u{0307}stanbul"));
        assert_ne!(fold("Trucks"), fold("Truck"));
    }

    #[test]
    fn bidi_controls_and_invisible_names_are_refused() {
        assert!(check("invoice\u{202E}txt.exe").is_err());
        assert!(check("a\u{2066}b\u{2069}").is_err());
        assert!(check("\u{200F}x").is_err());
        for invisible in [
            "\u{200B}",
            "\u{200B}\u{200D}",
            "\u{FEFF}",
            "\u{3164}",
            "\u{2800}",
        ] {
            assert!(check(invisible).is_err(), "{invisible:?}");
        }
        for fine in ["Trucks", "Café", "דוד", "مرحبا", "👍", "a\u{200D}b", "東京"] {
            assert_eq!(check(fine), Ok(()), "{fine:?}");
        }
    }
}
