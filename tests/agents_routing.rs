//! The routing table in `config/agents.yaml`: every deviation type reaches the intended agent,
//! priorities and ties resolve as documented, unmatched deviations fall back to escalation, and
//! bad files are rejected with the file, the key and the reason.

use std::path::Path;

use fulfillment_ai::agents::{AgentKind, RouteInput, RoutingTable};
use fulfillment_ai::config::pipeline::Severity;
use fulfillment_ai::model::records::DeviationType as T;

fn shipped() -> RoutingTable {
    RoutingTable::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/agents.yaml")).unwrap()
}

fn input(kind: T, severity: Severity, segment: Option<&str>, value: Option<f64>) -> RouteInput<'_> {
    RouteInput {
        kind,
        severity,
        segment,
        order_value: value,
    }
}

#[test]
fn shipped_table_routes_each_deviation_type_to_its_specialist() {
    let t = shipped();
    let cases = [
        (
            T::PaymentFailed,
            Severity::Warning,
            AgentKind::Payment,
            "payment-failures",
        ),
        (
            T::RefundRequested,
            Severity::Info,
            AgentKind::Refund,
            "refund-requests",
        ),
        (
            T::PartialDelivery,
            Severity::Warning,
            AgentKind::Refund,
            "refund-requests",
        ),
        (
            T::SlaShipBreach,
            Severity::Warning,
            AgentKind::Shipment,
            "shipping-problems",
        ),
        (
            T::SlaDeliveryBreach,
            Severity::Critical,
            AgentKind::Shipment,
            "shipping-problems",
        ),
        (
            T::FulfillmentGap,
            Severity::Warning,
            AgentKind::Shipment,
            "shipping-problems",
        ),
        (
            T::CarrierException,
            Severity::Warning,
            AgentKind::Shipment,
            "shipping-problems",
        ),
        (
            T::PredictedDelay,
            Severity::Critical,
            AgentKind::Shipment,
            "shipping-problems",
        ),
        (
            T::TicketRaised,
            Severity::Info,
            AgentKind::CustomerService,
            "customer-tickets",
        ),
        (
            T::KpiThresholdBreach,
            Severity::Critical,
            AgentKind::Escalation,
            "regional-kpi-collapse",
        ),
        (
            T::KpiAnomaly,
            Severity::Warning,
            AgentKind::Shipment,
            "kpi-warnings",
        ),
    ];
    for (kind, sev, agent, rule) in cases {
        let r = t.route(&input(kind, sev, Some("Consumer"), Some(120.0)));
        assert_eq!(
            (r.agent, r.rule.as_str()),
            (agent, rule),
            "{kind:?} {sev:?}"
        );
    }
}

#[test]
fn high_value_orders_outrank_the_type_rules_at_the_policy_boundary() {
    let t = shipped();
    // Over $1,000 is high value (escalation/high-value-orders); exactly $1,000 is not.
    let r = t.route(&input(
        T::PaymentFailed,
        Severity::Warning,
        None,
        Some(1450.0),
    ));
    assert_eq!(
        (r.agent, r.rule.as_str()),
        (AgentKind::Escalation, "high-value-orders-to-people")
    );
    let r = t.route(&input(
        T::PaymentFailed,
        Severity::Warning,
        None,
        Some(1000.0),
    ));
    assert_eq!(r.agent, AgentKind::Payment);
    // Unknown value: the value rule cannot match.
    let r = t.route(&input(T::RefundRequested, Severity::Info, None, None));
    assert_eq!(r.agent, AgentKind::Refund);
}

#[test]
fn priority_then_file_order_then_fallback() {
    let yaml = |rules: &str| {
        format!(
            "hop_limit: 2\nfallback: escalation\nagents:\n{}\nrules:\n{rules}",
            AGENTS
        )
    };
    let t = RoutingTable::parse(
        &yaml(
            "  - { name: a, priority: 1, match: { segments: [corporate] }, agent: refund }\n\
             \x20 - { name: b, priority: 5, match: { types: [ticket_raised] }, agent: payment }\n\
             \x20 - { name: c, priority: 5, match: { types: [ticket_raised] }, agent: shipment }\n",
        ),
        "agents.yaml",
    )
    .unwrap();
    // b and c tie at 5: the first listed wins; a loses on priority.
    let r = t.route(&input(
        T::TicketRaised,
        Severity::Info,
        Some("Corporate"),
        None,
    ));
    assert_eq!((r.agent, r.rule.as_str()), (AgentKind::Payment, "b"));
    // Segment match is case-insensitive.
    let r = t.route(&input(
        T::PaymentFailed,
        Severity::Info,
        Some("Corporate"),
        None,
    ));
    assert_eq!(r.rule, "a");
    let r = t.route(&input(
        T::PaymentFailed,
        Severity::Info,
        Some("Consumer"),
        None,
    ));
    assert_eq!(
        (r.agent, r.rule.as_str()),
        (AgentKind::Escalation, "fallback")
    );
}

const AGENTS: &str = "  shipment: { tools: [contact_carrier], policy_types: [shipping] }
  customer_service: { tools: [draft_customer_message], policy_types: [communication] }
  refund: { tools: [issue_refund], policy_types: [refund] }
  payment: { tools: [retry_payment], policy_types: [payments] }
  escalation: { tools: [create_ticket, request_human_approval], policy_types: [escalation] }";

#[test]
fn bad_tables_are_rejected_with_file_key_and_reason() {
    let base = format!("hop_limit: 2\nfallback: escalation\nagents:\n{AGENTS}\nrules: []\n");
    assert!(RoutingTable::parse(&base, "agents.yaml").is_ok());
    let cases: Vec<(String, &str, &str)> = vec![
        (base.replace("hop_limit: 2", "hop_limit: 0"), "hop_limit", "between 1 and 10"),
        (
            base.replace("rules: []", "rules: [{ name: x, match: { types: [parcel_eaten] }, agent: refund }]"),
            "",
            "unknown variant `parcel_eaten`",
        ),
        (
            base.replace("rules: []", "rules: [{ name: x, agent: robot }]"),
            "",
            "unknown variant `robot`",
        ),
        (
            base.replace("[issue_refund]", "[issue_refund, launch_rocket]"),
            "",
            "unknown variant `launch_rocket`",
        ),
        (
            base.replace("policy_types: [refund]", "policy_types: [refunds]"),
            "agents.refund.policy_types",
            "unknown policy type `refunds`",
        ),
        (
            base.replace("  payment: { tools: [retry_payment], policy_types: [payments] }\n", ""),
            "agents.payment",
            "missing",
        ),
        (
            base.replace("[create_ticket, request_human_approval]", "[create_ticket]"),
            "agents.escalation.tools",
            "RequestHumanApproval",
        ),
        (
            base.replace(
                "rules: []",
                "rules: [{ name: x, agent: refund }, { name: x, agent: payment }]",
            ),
            "rules[1].name",
            "used by an earlier rule",
        ),
        (
            base.replace(
                "rules: []",
                "rules: [{ name: x, match: { min_order_value: 50, max_order_value: 10 }, agent: refund }]",
            ),
            "rules[0].match.min_order_value",
            "above max_order_value",
        ),
        (
            base.replace("rules: []", "rules: []\nlimits: { partial_refund_percent: 150 }"),
            "limits.partial_refund_percent",
            "between 0 and 100",
        ),
        (base.replace("fallback:", "falback:"), "", "unknown field `falback`"),
    ];
    for (text, path, reason) in cases {
        let e = RoutingTable::parse(&text, "config/agents.yaml").unwrap_err();
        assert_eq!(e.file, "config/agents.yaml", "{e}");
        if !path.is_empty() {
            assert_eq!(e.path, path, "{e}");
        }
        assert!(e.reason.contains(reason), "{e} (wanted {reason})");
    }
}
