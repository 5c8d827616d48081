//! Personal data detection and redaction, as the data-protection policy requires: emails, phone
//! numbers, card numbers, street addresses and postal codes never enter a prompt
//! (data-protection/never-in-prompts) and never appear in a customer message
//! (data-protection/customer-message-data; the last four card digits may).
//!
//! In: free text (customer messages, model output). Out: the text with each finding replaced by
//! a token such as `[EMAIL]`, and the kinds found.

use std::sync::OnceLock;

use regex::Regex;
use serde::Serialize;

/// A kind of personal data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Email,
    Card,
    Phone,
    StreetAddress,
    PostalCode,
}

impl PiiKind {
    fn token(self) -> &'static str {
        match self {
            PiiKind::Email => "[EMAIL]",
            PiiKind::Card => "[CARD]",
            PiiKind::Phone => "[PHONE]",
            PiiKind::StreetAddress => "[ADDRESS]",
            PiiKind::PostalCode => "[POSTCODE]",
        }
    }
}

fn patterns() -> &'static [(PiiKind, Regex)] {
    static P: OnceLock<Vec<(PiiKind, Regex)>> = OnceLock::new();
    P.get_or_init(|| {
        let r = |s: &str| Regex::new(s).expect("valid PII pattern");
        vec![
            (PiiKind::Email, r(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b")),
            // 13-19 digits, optionally grouped by spaces or dashes; checked with Luhn below.
            (PiiKind::Card, r(r"\b(?:\d[ -]?){12,18}\d\b")),
            (
                PiiKind::Phone,
                r(r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)|\b\d{3})[ .-]\d{3}[ .-]\d{4}\b"),
            ),
            (
                PiiKind::StreetAddress,
                r(r"(?i)\b\d{1,6}\s+(?:[a-z0-9.'-]+\s+){1,4}(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|terrace|parkway|pkwy)\b\.?"),
            ),
            // US ZIP+4, a ZIP after a state code ("CA 94103"), or a UK postcode.
            (
                PiiKind::PostalCode,
                r(r"\b\d{5}-\d{4}\b|\b[A-Z]{2},? \d{5}\b|\b[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}\b"),
            ),
        ]
    })
}

fn luhn(digits: &str) -> bool {
    let ds: Vec<u32> = digits.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&ds.len()) {
        return false;
    }
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The kinds of personal data in `text`.
pub fn find(text: &str) -> Vec<PiiKind> {
    redact(text).1
}

/// `text` with personal data replaced by tokens, and the kinds replaced (sorted, unique).
pub fn redact(text: &str) -> (String, Vec<PiiKind>) {
    let mut out = text.to_string();
    let mut kinds = Vec::new();
    for (kind, re) in patterns() {
        let mut found = false;
        let replaced = re.replace_all(&out, |c: &regex::Captures| {
            let m = &c[0];
            if *kind == PiiKind::Card && !luhn(m) {
                return m.to_string();
            }
            found = true;
            kind.token().to_string()
        });
        if found {
            out = replaced.into_owned();
            kinds.push(*kind);
        }
    }
    kinds.sort();
    kinds.dedup();
    (out, kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_redacts_each_kind() {
        assert_eq!(find("Springfield, IL 62704"), vec![PiiKind::PostalCode]);
        let (t, k) = redact(
            "Hi, I'm at jane.doe@example.com or (415) 555-0134, card 4111 1111 1111 1111, \
             ship to 1200 Market Street, zip 94103-1234.",
        );
        assert_eq!(
            k,
            vec![
                PiiKind::Email,
                PiiKind::Card,
                PiiKind::Phone,
                PiiKind::StreetAddress,
                PiiKind::PostalCode
            ]
        );
        assert!(t.contains("[EMAIL]") && t.contains("[CARD]") && t.contains("[PHONE]"));
        assert!(t.contains("[ADDRESS]") && t.contains("[POSTCODE]"), "{t}");
        assert!(!t.contains("4111") && !t.contains("555-0134") && !t.contains("Market"));
    }

    #[test]
    fn order_data_is_not_mistaken_for_personal_data() {
        for ok in [
            "Order CA-2014-130092 for $1,450.00 shipped Second Class on 2014-01-12.",
            "Refund of $120.00 to the card ending 1111, 45 days after delivery.",
            "Your 3 items will arrive within 5 days; tracking 1Z999AA10123456784.",
            "Credit of 15% for 7 days late",
        ] {
            assert_eq!(find(ok), vec![], "{ok}");
        }
        // Digits that fail the Luhn check are not a card.
        assert_eq!(find("ref 4111 1111 1111 1112"), vec![]);
    }
}
