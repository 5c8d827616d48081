//! Money and eligibility, computed in code from the written policy: refund tiers, late-delivery
//! credit, lost-parcel, payment-error and repeated-contact remedies, credit caps and the approval
//! limits. The language model explains and cites these numbers; it never decides them.
//!
//! In: facts about an order (days since delivery, days late, value, what was already refunded or
//! credited, VIP status) and the [`PolicyLimits`] (defaults = the policy documents, overridable in
//! `config/agents.yaml`). Out: amounts in cents with the chunk ids of the sections that set them,
//! and whether a person must approve.

use serde::{Deserialize, Serialize};

/// An amount of money in cents.
pub type Cents = i64;

/// Formats cents as dollars: `12345` -> `$123.45`.
pub fn dollars(c: Cents) -> String {
    format!("${}.{:02}", c / 100, (c % 100).abs())
}

/// Numbers the policies set. Defaults are the values written in `policies/`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyLimits {
    /// Full refund up to this many days after delivery (refund/full-refund-30-days).
    pub full_refund_days: i64,
    /// Half refund up to this many days (refund/partial-refund-30-60-days).
    pub partial_refund_days: i64,
    /// Percent refunded in the partial window.
    pub partial_refund_percent: i64,
    /// Refunds an agent may approve per order, cumulative (escalation/refund-authority).
    pub refund_approval_limit: Cents,
    /// Orders above this are reviewed by a person (escalation/high-value-orders).
    pub high_value_order: Cents,
    /// Store credit per order, all rows together (compensation/caps-and-stacking).
    pub credit_cap_per_order: Cents,
    /// Store credit per customer in 30 days.
    pub credit_cap_per_customer_30d: Cents,
    /// Late-delivery credit tiers: (from days late, percent of order value, cap).
    pub late_credit_tiers: Vec<(i64, i64, Cents)>,
    /// Flat credits.
    pub lost_parcel_credit: Cents,
    pub payment_error_credit: Cents,
    pub bank_fee_refund_cap: Cents,
    pub repeated_contact_credit: Cents,
    /// Contacts within 7 days that make a case "repeated" (escalation/repeated-contacts).
    pub repeated_contacts: u32,
    /// VIP delays above this many days go to Tier 2 (escalation/vip-customers).
    pub vip_delay_review_days: i64,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        PolicyLimits {
            full_refund_days: 30,
            partial_refund_days: 60,
            partial_refund_percent: 50,
            refund_approval_limit: 500_00,
            high_value_order: 1_000_00,
            credit_cap_per_order: 150_00,
            credit_cap_per_customer_30d: 250_00,
            late_credit_tiers: vec![(3, 10, 25_00), (6, 15, 50_00), (11, 20, 100_00)],
            lost_parcel_credit: 10_00,
            payment_error_credit: 10_00,
            bank_fee_refund_cap: 35_00,
            repeated_contact_credit: 10_00,
            repeated_contacts: 3,
            vip_delay_review_days: 3,
        }
    }
}

/// An amount and the policy sections that set it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Computed {
    pub amount: Cents,
    /// Percent of the base amount, where a percentage applies.
    pub percent: Option<i64>,
    /// Chunk ids (`doc/section`) a resolution must cite for this amount.
    pub cites: Vec<&'static str>,
    /// One line saying how the amount follows from the policy.
    pub basis: String,
}

impl PolicyLimits {
    /// Checks the limits make sense; the reason names the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, r: &str| Err((f.to_string(), r.to_string()));
        if self.full_refund_days < 0 || self.partial_refund_days < self.full_refund_days {
            return bad(
                "partial_refund_days",
                "must be at least full_refund_days, both non-negative",
            );
        }
        if !(0..=100).contains(&self.partial_refund_percent) {
            return bad("partial_refund_percent", "must be between 0 and 100");
        }
        if self.late_credit_tiers.windows(2).any(|w| w[1].0 <= w[0].0) {
            return bad(
                "late_credit_tiers",
                "tiers must start at strictly increasing days late",
            );
        }
        for (name, v) in [
            ("refund_approval_limit", self.refund_approval_limit),
            ("high_value_order", self.high_value_order),
            ("credit_cap_per_order", self.credit_cap_per_order),
            (
                "credit_cap_per_customer_30d",
                self.credit_cap_per_customer_30d,
            ),
        ] {
            if v <= 0 {
                return bad(name, "must be a positive amount in cents");
            }
        }
        Ok(())
    }

    /// Refund of `item_price` requested `days_since_delivery` days after delivery (day 1 is the
    /// day after). `None` before delivery: the refund rules do not apply yet.
    pub fn refund(&self, days_since_delivery: i64, item_price: Cents) -> Option<Computed> {
        if days_since_delivery < 0 {
            return None;
        }
        Some(if days_since_delivery <= self.full_refund_days {
            Computed {
                amount: item_price,
                percent: Some(100),
                cites: vec!["refund/full-refund-30-days"],
                basis: format!(
                    "requested on day {days_since_delivery} after delivery, within {} days: 100%",
                    self.full_refund_days
                ),
            }
        } else if days_since_delivery <= self.partial_refund_days {
            Computed {
                amount: item_price * self.partial_refund_percent / 100,
                percent: Some(self.partial_refund_percent),
                cites: vec!["refund/partial-refund-30-60-days"],
                basis: format!(
                    "requested on day {days_since_delivery}, between day {} and day {}: {}%",
                    self.full_refund_days + 1,
                    self.partial_refund_days,
                    self.partial_refund_percent
                ),
            }
        } else {
            Computed {
                amount: 0,
                percent: Some(0),
                cites: vec!["refund/no-refund-after-60-days"],
                basis: format!(
                    "requested on day {days_since_delivery}, after day {}: no refund",
                    self.partial_refund_days
                ),
            }
        })
    }

    /// Store credit for an order `days_late` days past its promised date (the shipping fee is
    /// refunded on every late order, separately).
    pub fn late_delivery_credit(&self, days_late: i64, order_value: Cents) -> Computed {
        let tier = self
            .late_credit_tiers
            .iter()
            .rev()
            .find(|(from, _, _)| days_late >= *from);
        let (amount, percent, basis) = match tier {
            Some((from, pct, cap)) => {
                let raw = order_value * pct / 100;
                (
                    raw.min(*cap),
                    Some(*pct),
                    format!(
                        "{days_late} days late (tier from day {from}): {pct}% of {} = {}, capped at {}",
                        dollars(order_value),
                        dollars(raw),
                        dollars(*cap)
                    ),
                )
            }
            None if days_late > 0 => (
                0,
                Some(0),
                format!("{days_late} days late: below the first credit tier"),
            ),
            None => (0, None, "not late".to_string()),
        };
        Computed {
            amount,
            percent,
            cites: vec![
                "refund/late-delivery-compensation",
                "compensation/late-delivery",
            ],
            basis,
        }
    }

    /// A parcel declared lost: full refund of items and shipping plus a flat credit.
    pub fn lost_parcel(&self, items: Cents, shipping: Cents) -> (Computed, Computed) {
        (
            Computed {
                amount: items + shipping,
                percent: Some(100),
                cites: vec!["refund/lost-parcel"],
                basis: "lost parcel: items and shipping refunded in full".into(),
            },
            Computed {
                amount: self.lost_parcel_credit,
                percent: None,
                cites: vec!["compensation/lost-parcel"],
                basis: format!(
                    "lost parcel: {} store credit",
                    dollars(self.lost_parcel_credit)
                ),
            },
        )
    }

    /// Credit for a payment error that was ours, plus proven bank fees up to the cap.
    pub fn payment_error_credit(&self, our_error: bool, bank_fees: Cents) -> Computed {
        if !our_error {
            return Computed {
                amount: 0,
                percent: None,
                cites: vec!["compensation/payment-error"],
                basis: "declined by the customer's bank or a fraud check: not our error".into(),
            };
        }
        let fees = bank_fees.clamp(0, self.bank_fee_refund_cap);
        Computed {
            amount: self.payment_error_credit + fees,
            percent: None,
            cites: vec!["compensation/payment-error"],
            basis: format!(
                "our payment error: {} credit + {} bank fees (cap {})",
                dollars(self.payment_error_credit),
                dollars(fees),
                dollars(self.bank_fee_refund_cap)
            ),
        }
    }

    /// Whether `contacts` within 7 days make the case a repeated contact, and the credit if the
    /// cause was ours and no repeated-contact credit was given on the order yet.
    pub fn repeated_contact(
        &self,
        contacts: u32,
        our_cause: bool,
        already_credited: bool,
    ) -> Option<Computed> {
        (contacts >= self.repeated_contacts).then(|| Computed {
            amount: if our_cause && !already_credited {
                self.repeated_contact_credit
            } else {
                0
            },
            percent: None,
            cites: vec![
                "escalation/repeated-contacts",
                "compensation/repeated-contact",
            ],
            basis: format!(
                "{contacts} contacts in 7 days (threshold {})",
                self.repeated_contacts
            ),
        })
    }

    /// Credit that may be granted without approval given what the order and the customer already
    /// got; the rest needs Tier 2 approval.
    pub fn cap_credit(
        &self,
        requested: Cents,
        order_so_far: Cents,
        customer_30d: Cents,
    ) -> CappedCredit {
        let room = (self.credit_cap_per_order - order_so_far)
            .min(self.credit_cap_per_customer_30d - customer_30d)
            .max(0);
        let granted = requested.clamp(0, room);
        CappedCredit {
            granted,
            needs_approval: requested - granted,
        }
    }

    /// Whether a person must approve a refund of `amount` on an order of `order_value` that has
    /// had `refunded_so_far` refunded, for a customer who is or is not a VIP. The reason cites
    /// the section.
    pub fn refund_approval(
        &self,
        amount: Cents,
        refunded_so_far: Cents,
        order_value: Cents,
        vip: bool,
    ) -> Option<Approval> {
        if refunded_so_far + amount > self.refund_approval_limit {
            return Some(Approval {
                approver: "Refunds Supervisor",
                cites: "escalation/refund-authority",
                reason: format!(
                    "refunds on the order would reach {}, above the {} agent limit",
                    dollars(refunded_so_far + amount),
                    dollars(self.refund_approval_limit)
                ),
            });
        }
        if order_value > self.high_value_order {
            return Some(Approval {
                approver: "Tier 2 Customer Care",
                cites: "escalation/high-value-orders",
                reason: format!(
                    "order value {} is above {}: a person decides",
                    dollars(order_value),
                    dollars(self.high_value_order)
                ),
            });
        }
        if vip {
            return Some(Approval {
                approver: "Tier 2 Customer Care",
                cites: "escalation/vip-customers",
                reason: "VIP customer: refunds are reviewed by Tier 2".into(),
            });
        }
        None
    }
}

/// Credit split into what may be granted now and what needs approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CappedCredit {
    pub granted: Cents,
    pub needs_approval: Cents,
}

/// A decision a person must take, who, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Approval {
    pub approver: &'static str,
    pub cites: &'static str,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refund_tiers_follow_the_policy_examples_and_boundaries() {
        let p = PolicyLimits::default();
        // "a $240 chair whose return is requested 45 days after delivery earns a $120 refund;
        // the same request on day 29 would have earned the full $240."
        assert_eq!(p.refund(45, 240_00).unwrap().amount, 120_00);
        assert_eq!(p.refund(29, 240_00).unwrap().amount, 240_00);
        // Day 30 still qualifies in full; day 31 is half; day 60 half; day 61 nothing.
        assert_eq!(p.refund(30, 100_00).unwrap().percent, Some(100));
        assert_eq!(p.refund(31, 100_00).unwrap().percent, Some(50));
        assert_eq!(p.refund(60, 100_00).unwrap().amount, 50_00);
        let none = p.refund(61, 100_00).unwrap();
        assert_eq!(
            (none.amount, none.cites[0]),
            (0, "refund/no-refund-after-60-days")
        );
        assert!(p.refund(-1, 100_00).is_none());
        // Odd cents round down, never up.
        assert_eq!(p.refund(40, 99).unwrap().amount, 49);
    }

    #[test]
    fn late_credit_tiers_and_caps() {
        let p = PolicyLimits::default();
        // "a $300 order delivered 7 days late gets its shipping fee back and $45 in credit"
        assert_eq!(p.late_delivery_credit(7, 300_00).amount, 45_00);
        assert_eq!(p.late_delivery_credit(2, 300_00).amount, 0);
        assert_eq!(p.late_delivery_credit(3, 300_00).amount, 25_00); // 10% = 30, cap 25
        assert_eq!(p.late_delivery_credit(5, 100_00).amount, 10_00);
        assert_eq!(p.late_delivery_credit(10, 1_000_00).amount, 50_00);
        assert_eq!(p.late_delivery_credit(11, 400_00).amount, 80_00);
        assert_eq!(p.late_delivery_credit(30, 5_000_00).amount, 100_00);
        assert_eq!(p.late_delivery_credit(0, 300_00).percent, None);
    }

    #[test]
    fn credit_caps_split_off_what_needs_approval() {
        let p = PolicyLimits::default();
        assert_eq!(
            p.cap_credit(45_00, 0, 0),
            CappedCredit {
                granted: 45_00,
                needs_approval: 0
            }
        );
        assert_eq!(
            p.cap_credit(45_00, 120_00, 0),
            CappedCredit {
                granted: 30_00,
                needs_approval: 15_00
            }
        );
        assert_eq!(
            p.cap_credit(45_00, 0, 240_00),
            CappedCredit {
                granted: 10_00,
                needs_approval: 35_00
            }
        );
        assert_eq!(p.cap_credit(10_00, 150_00, 0).granted, 0);
    }

    #[test]
    fn approvals_name_who_and_why() {
        let p = PolicyLimits::default();
        assert!(p.refund_approval(499_00, 0, 600_00, false).is_none());
        let a = p.refund_approval(300_00, 250_00, 600_00, false).unwrap();
        assert_eq!(
            (a.approver, a.cites),
            ("Refunds Supervisor", "escalation/refund-authority")
        );
        let a = p.refund_approval(100_00, 0, 1_450_00, false).unwrap();
        assert_eq!(a.cites, "escalation/high-value-orders");
        assert_eq!(
            p.refund_approval(10_00, 0, 50_00, true).unwrap().cites,
            "escalation/vip-customers"
        );
        // Exactly the limit and exactly $1,000 are still the agent's to approve.
        assert!(p.refund_approval(500_00, 0, 1_000_00, false).is_none());
    }

    #[test]
    fn flat_remedies() {
        let p = PolicyLimits::default();
        let (refund, credit) = p.lost_parcel(180_00, 12_50);
        assert_eq!((refund.amount, credit.amount), (192_50, 10_00));
        assert_eq!(p.payment_error_credit(true, 50_00).amount, 45_00);
        assert_eq!(p.payment_error_credit(false, 50_00).amount, 0);
        assert!(p.repeated_contact(2, true, false).is_none());
        assert_eq!(p.repeated_contact(3, true, false).unwrap().amount, 10_00);
        assert_eq!(p.repeated_contact(4, true, true).unwrap().amount, 0);
        assert_eq!(dollars(12_345), "$123.45");
    }

    #[test]
    fn every_cited_section_exists_in_the_policies() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let mut ids = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&root).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") && !path.ends_with("README.md") {
                let text = std::fs::read_to_string(&path).unwrap();
                let doc = crate::rag::policy::PolicyDocument::parse(&text, "t").unwrap();
                for s in &doc.sections {
                    ids.insert(format!("{}/{}", doc.id, s.id));
                }
            }
        }
        let p = PolicyLimits::default();
        let mut cited: Vec<&str> = Vec::new();
        cited.extend(p.refund(1, 1).unwrap().cites);
        cited.extend(p.refund(40, 1).unwrap().cites);
        cited.extend(p.refund(90, 1).unwrap().cites);
        cited.extend(p.late_delivery_credit(5, 1).cites);
        let (a, b) = p.lost_parcel(1, 1);
        cited.extend(a.cites.into_iter().chain(b.cites));
        cited.extend(p.payment_error_credit(true, 0).cites);
        cited.extend(p.repeated_contact(5, true, false).unwrap().cites);
        for (amount, so_far, value, vip) in [
            (600_00, 0, 1, false),
            (1, 0, 2_000_00, false),
            (1, 0, 1, true),
        ] {
            cited.push(p.refund_approval(amount, so_far, value, vip).unwrap().cites);
        }
        for c in cited {
            assert!(ids.contains(c), "{c} is not a section of policies/");
        }
    }
}
