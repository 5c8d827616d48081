//! Policy documents: Markdown with YAML front matter, split into sections that become retrieval
//! chunks.
//!
//! In: document text (`policies/*.md`, or a document added at run time). Out: a
//! [`PolicyDocument`] with its sections, or a [`DocumentError`] saying why it was rejected
//! (empty, too large, no front matter, bad fields, sections that do not match the headings).
//!
//! Format: front matter between `---` lines with `id`, `title`, `policy_type`, `effective_date`,
//! `jurisdiction` (list), `version`, `sections` (ids in order); then `## [section-id] Title`
//! headings, each followed by the section's text.

use serde::{Deserialize, Serialize};

/// Largest accepted document.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Policy kinds the agents filter on.
pub const POLICY_TYPES: [&str; 9] = [
    "refund",
    "returns",
    "warranty",
    "shipping",
    "payments",
    "escalation",
    "communication",
    "data_protection",
    "compensation",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FrontMatter {
    id: String,
    title: String,
    policy_type: String,
    effective_date: String,
    jurisdiction: Vec<String>,
    version: u32,
    sections: Vec<String>,
}

/// One section: a retrieval chunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub id: String,
    pub title: String,
    pub text: String,
}

/// A parsed, validated policy document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyDocument {
    pub id: String,
    pub title: String,
    pub policy_type: String,
    pub effective_date: String,
    pub jurisdiction: Vec<String>,
    pub version: u32,
    pub sections: Vec<Section>,
}

/// Why a document was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}: {reason}")]
pub struct DocumentError {
    pub source_name: String,
    pub reason: String,
}

fn is_kebab(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.starts_with('-')
        && !id.ends_with('-')
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

impl PolicyDocument {
    /// Parses `text`; `source_name` (a file name) names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<PolicyDocument, DocumentError> {
        let bad = |reason: String| DocumentError {
            source_name: source_name.into(),
            reason,
        };
        if text.trim().is_empty() {
            return Err(bad("the document is empty".into()));
        }
        if text.len() > MAX_DOCUMENT_BYTES {
            return Err(bad(format!(
                "the document is {} bytes; the limit is {MAX_DOCUMENT_BYTES}",
                text.len()
            )));
        }
        let rest = text
            .strip_prefix("---\n")
            .or_else(|| text.strip_prefix("---\r\n"))
            .ok_or_else(|| {
                bad("no front matter: the document must start with a `---` line".into())
            })?;
        let end = rest
            .find("\n---\n")
            .or_else(|| rest.find("\n---\r\n"))
            .ok_or_else(|| bad("the front matter is not closed by a `---` line".into()))?;
        let (yaml, body) = (&rest[..end], &rest[end + 5..]);
        let front: FrontMatter = crate::config::pipeline::parse_yaml(yaml, source_name)
            .map_err(|e| bad(format!("front matter: {}: {}", e.path, e.reason)))?;
        if !is_kebab(&front.id) {
            return Err(bad(format!(
                "front matter: id `{}` must be lowercase kebab-case",
                front.id
            )));
        }
        if front.title.trim().is_empty() {
            return Err(bad("front matter: title is empty".into()));
        }
        if !POLICY_TYPES.contains(&front.policy_type.as_str()) {
            return Err(bad(format!(
                "front matter: policy_type `{}` is not one of {}",
                front.policy_type,
                POLICY_TYPES.join(", ")
            )));
        }
        if !is_date(&front.effective_date) {
            return Err(bad(format!(
                "front matter: effective_date `{}` must be YYYY-MM-DD",
                front.effective_date
            )));
        }
        if front.jurisdiction.is_empty() {
            return Err(bad("front matter: jurisdiction lists nothing".into()));
        }

        let mut sections: Vec<Section> = Vec::new();
        for line in body.lines() {
            if let Some(heading) = line.strip_prefix("## ") {
                let heading = heading.trim();
                let (id, title) = heading
                    .strip_prefix('[')
                    .and_then(|h| h.split_once(']'))
                    .ok_or_else(|| {
                        bad(format!(
                            "heading `## {heading}` must look like `## [section-id] Title`"
                        ))
                    })?;
                if !is_kebab(id) {
                    return Err(bad(format!(
                        "section id `{id}` must be lowercase kebab-case"
                    )));
                }
                sections.push(Section {
                    id: id.into(),
                    title: title.trim().into(),
                    text: String::new(),
                });
            } else if let Some(s) = sections.last_mut() {
                if !s.text.is_empty() || !line.trim().is_empty() {
                    s.text.push_str(line);
                    s.text.push('\n');
                }
            }
        }
        if sections.is_empty() {
            return Err(bad("no `## [section-id] Title` sections".into()));
        }
        let found: Vec<&str> = sections.iter().map(|s| s.id.as_str()).collect();
        if found
            != front
                .sections
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        {
            return Err(bad(format!(
                "front matter sections {:?} do not match the headings {found:?}",
                front.sections
            )));
        }
        for s in &mut sections {
            let trimmed = s.text.trim().to_string();
            if trimmed.is_empty() {
                return Err(bad(format!("section `{}` has no text", s.id)));
            }
            s.text = trimmed;
        }
        Ok(PolicyDocument {
            id: front.id,
            title: front.title,
            policy_type: front.policy_type,
            effective_date: front.effective_date,
            jurisdiction: front.jurisdiction,
            version: front.version,
            sections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "---\nid: refund\ntitle: Refund policy\npolicy_type: refund\neffective_date: 2026-01-01\njurisdiction: [US, EU]\nversion: 1\nsections: [a, b-2]\n---\n# Refund policy\n\nIntro.\n\n## [a] First\n\nText one.\n\n## [b-2] Second\nText two\nmore.\n";

    #[test]
    fn parses_sections_and_front_matter() {
        let d = PolicyDocument::parse(DOC, "refund.md").unwrap();
        assert_eq!(d.id, "refund");
        assert_eq!(d.jurisdiction, vec!["US", "EU"]);
        assert_eq!(
            d.sections,
            vec![
                Section {
                    id: "a".into(),
                    title: "First".into(),
                    text: "Text one.".into()
                },
                Section {
                    id: "b-2".into(),
                    title: "Second".into(),
                    text: "Text two\nmore.".into()
                }
            ]
        );
    }

    #[test]
    fn bad_documents_are_rejected_with_a_reason() {
        let reason = |text: &str| PolicyDocument::parse(text, "x.md").unwrap_err().reason;
        assert_eq!(reason("  \n"), "the document is empty");
        assert!(reason("# Title\n\n## [a] A\ntext\n").starts_with("no front matter"));
        assert!(reason(&"x".repeat(MAX_DOCUMENT_BYTES + 1)).contains("limit is 262144"));
        assert!(
            reason(&DOC.replace("policy_type: refund", "policy_type: misc"))
                .contains("policy_type `misc` is not one of")
        );
        assert!(reason(&DOC.replace("[a, b-2]", "[a]")).contains("do not match the headings"));
        assert!(reason(&DOC.replace("## [a] First", "## First")).contains("must look like"));
        assert!(reason(&DOC.replace("version: 1\n", "")).contains("missing field `version`"));
        assert!(reason(&DOC.replace("2026-01-01", "Jan 1")).contains("YYYY-MM-DD"));
        assert!(reason(&DOC.replace("Text one.", "")).contains("section `a` has no text"));
    }

    #[test]
    fn shipped_policies_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "md") && !p.ends_with("README.md") {
                let text = std::fs::read_to_string(&p).unwrap();
                PolicyDocument::parse(&text, &p.display().to_string()).unwrap();
                n += 1;
            }
        }
        assert_eq!(n, 9);
    }
}
