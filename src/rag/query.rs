//! Query normalisation before retrieval: short durations become days, the unit the policies
//! write their windows in ("2 months" -> "60 days", "three weeks" -> "21 days", "a month and a
//! half" -> "45 days"). Neither BM25 nor MiniLM relates "2 months" to "60 days", and refund and
//! return questions hinge on exactly that. Periods the policies themselves give in months or
//! years (warranties: "12 months", "2 years") are left alone: above 90 days, and years, stay.
//!
//! In: the user's query. Out: the query with each recognised duration replaced; everything else
//! is kept verbatim.

/// Days per unit. A month counts as 30 days, as in the refund and returns windows.
fn unit_days(word: &str) -> Option<u32> {
    match word {
        "day" | "days" => Some(1),
        "week" | "weeks" => Some(7),
        "month" | "months" => Some(30),
        _ => None,
    }
}

fn count(word: &str) -> Option<f32> {
    let n = match word {
        "a" | "an" | "one" => 1.0,
        "two" | "couple" => 2.0,
        "three" => 3.0,
        "four" => 4.0,
        "five" => 5.0,
        "six" => 6.0,
        "seven" => 7.0,
        "eight" => 8.0,
        "nine" => 9.0,
        "ten" => 10.0,
        "eleven" => 11.0,
        "twelve" => 12.0,
        "few" => 3.0,
        _ => {
            return word
                .parse::<f32>()
                .ok()
                .filter(|n| *n > 0.0 && *n < 10_000.0)
        }
    };
    Some(n)
}

/// `query` with durations written as days. Word boundaries and the words around a duration are
/// kept; only the count, its unit and a trailing "and a half" are rewritten.
pub fn normalize(query: &str) -> String {
    let words: Vec<&str> = query.split_whitespace().collect();
    let bare = |w: &str| {
        w.trim_matches(|c: char| !c.is_alphanumeric() && c != '.')
            .trim_end_matches('.')
            .to_lowercase()
    };
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        // count [of]? unit [and a half]?  e.g. "2 months", "a couple of weeks".
        let mut parsed = None;
        if let Some(n) = count(&bare(words[i])) {
            let mut j = i + 1;
            let mut n = n;
            if bare(words[i]) == "a" && words.get(j).map(|w| bare(w)) == Some("couple".into()) {
                n = 2.0;
                j += 1;
            }
            if words.get(j).map(|w| bare(w)) == Some("of".into()) {
                j += 1;
            }
            if let Some(days) = words.get(j).and_then(|w| unit_days(&bare(w))) {
                let mut end = j + 1;
                let mut total = n * days as f32;
                let tail: Vec<String> = words[end..].iter().take(3).map(|w| bare(w)).collect();
                if tail.len() == 3 && tail[0] == "and" && tail[1] == "a" && tail[2] == "half" {
                    total += days as f32 / 2.0;
                    end += 3;
                }
                // Rewrite weeks and short month spans; "30 days" and "14 months" stay.
                if days > 1 && total <= 90.0 {
                    parsed = Some((end, total.round() as u32, words[end - 1]));
                }
            }
        }
        match parsed {
            Some((end, days, last)) => {
                let trailing: String = last
                    .chars()
                    .rev()
                    .take_while(|c| !c.is_alphanumeric())
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                out.push(format!("{days} days{trailing}"));
                i = end;
            }
            None => {
                out.push(words[i].to_string());
                i += 1;
            }
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn durations_become_days_and_the_rest_is_kept() {
        assert_eq!(
            normalize("its been more than 2 months since it arrived, can i send it back"),
            "its been more than 60 days since it arrived, can i send it back"
        );
        assert_eq!(
            normalize("bought a desk three weeks ago"),
            "bought a desk 21 days ago"
        );
        assert_eq!(
            normalize("a month and a half after delivery"),
            "45 days after delivery"
        );
        assert_eq!(normalize("after a couple of weeks?"), "after 14 days?");
        assert_eq!(
            normalize("broke after 14 months."),
            "broke after 14 months."
        );
        assert_eq!(normalize("covered for one year."), "covered for one year.");
        assert_eq!(normalize("within 30 days"), "within 30 days");
        assert_eq!(normalize("a desk and two chairs"), "a desk and two chairs");
        assert_eq!(normalize("3 boxes, 2 weeks"), "3 boxes, 14 days");
    }
}
