//! The OpenAPI 3.0 document of the REST API, served at `/openapi.json`.
//!
//! In: nothing (written here, next to the routes in [`super::api`]). Out: the document as JSON.
//! WebSockets are described in `docs/API.md`; OpenAPI 3.0 has no way to describe them.

use serde_json::{json, Value};

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn required_query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": true, "description": description, "schema": schema})
}

fn path_id(description: &str) -> Value {
    json!({"name": "id", "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn problem(description: &str) -> Value {
    json!({"description": description, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

fn body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn page_params() -> Vec<Value> {
    vec![
        query(
            "limit",
            "Page size (1-1000, default 50)",
            json!({"type": "integer", "minimum": 1, "maximum": 1000}),
        ),
        query(
            "offset",
            "Items to skip",
            json!({"type": "integer", "minimum": 0}),
        ),
    ]
}

fn object() -> Value {
    json!({"type": "object"})
}

fn list_of(item: &str) -> Value {
    json!({"type": "object", "properties": {"total": {"type": "integer"}, "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}}}})
}

/// The document.
pub fn document() -> Value {
    let mut order_params = page_params();
    order_params.extend([
        query("status", "created | paid | payment_failed | shipped | exception | delivered | cancelled | returned", json!({"type": "string"})),
        query("region", "Region (exact, case-insensitive)", json!({"type": "string"})),
        query("ship_mode", "Ship mode (exact, case-insensitive)", json!({"type": "string"})),
        query("min_risk", "Only orders whose latest late-delivery risk is at least this (0..1)", json!({"type": "number"})),
        query("from", "Created at or after (event time, epoch ms)", json!({"type": "integer"})),
        query("to", "Created before (event time, epoch ms)", json!({"type": "integer"})),
        query("q", "Substring of the order id or the customer id", json!({"type": "string"})),
    ]);
    let mut deviation_params = page_params();
    deviation_params.extend([
        query(
            "type",
            "Deviation types, comma separated",
            json!({"type": "string"}),
        ),
        query(
            "severity",
            "info, warning, critical; comma separated",
            json!({"type": "string"}),
        ),
        query(
            "order_id",
            "Only this order's deviations",
            json!({"type": "string"}),
        ),
    ]);
    let unauthorized = problem("The API key is missing or wrong");
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "fulfillment-ai",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Live KPIs, deviations, orders, agent cases and the policy knowledge base of a running fulfillment-ai job. WebSockets /ws/kpi and /ws/deviations are described in docs/API.md."
        },
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": {"type": "object", "required": ["title", "status", "detail"], "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}}},
                "KpiRecord": {"type": "object", "required": ["kpi", "dims", "window_start", "window_end", "status", "version", "final"], "properties": {
                    "kpi": {"type": "string"}, "dims": {"type": "object", "additionalProperties": {"type": "string"}},
                    "window_start": {"type": "integer"}, "window_end": {"type": "integer"},
                    "value": {"type": "number", "nullable": true}, "numerator": {"type": "integer"}, "denominator": {"type": "integer"},
                    "status": {"type": "string", "enum": ["ok", "warn", "critical", "unrated"]},
                    "version": {"type": "integer"}, "final": {"type": "boolean"}}},
                "Deviation": {"type": "object", "required": ["id", "type", "severity", "summary", "event_time"], "properties": {
                    "id": {"type": "string"}, "type": {"type": "string"}, "severity": {"type": "string", "enum": ["info", "warning", "critical"]},
                    "order_id": {"type": "string", "nullable": true}, "context": {"type": "object"}, "evidence": {"type": "object"},
                    "summary": {"type": "string"}, "event_time": {"type": "integer"}, "detected_at": {"type": "integer"}}},
                "OrderSummary": {"type": "object", "required": ["order_id", "status", "last_ts", "deviations"], "properties": {
                    "order_id": {"type": "string"}, "status": {"type": "string"}, "customer_id": {"type": "string", "nullable": true},
                    "segment": {"type": "string", "nullable": true}, "region": {"type": "string", "nullable": true},
                    "ship_mode": {"type": "string", "nullable": true}, "warehouse": {"type": "string", "nullable": true},
                    "carrier": {"type": "string", "nullable": true}, "amount": {"type": "number", "nullable": true},
                    "created_ts": {"type": "integer", "nullable": true}, "promised_ts": {"type": "integer", "nullable": true},
                    "last_ts": {"type": "integer"}, "risk": {"type": "number", "nullable": true}, "deviations": {"type": "integer"}}},
                "Case": {"type": "object", "required": ["case_id", "status", "deviation", "messages", "runs", "actions"], "properties": {
                    "case_id": {"type": "string"}, "status": {"type": "string"}, "deviation": {"$ref": "#/components/schemas/Deviation"},
                    "messages": {"type": "array", "items": {"type": "object"}}, "runs": {"type": "array", "items": {"type": "object"}},
                    "actions": {"type": "array", "items": {"type": "object"}}}},
                "ThresholdSet": {"type": "object", "required": ["version", "thresholds"], "properties": {
                    "version": {"type": "integer"}, "thresholds": {"type": "object", "additionalProperties": {"type": "object"}}}}
            }
        },
        "paths": {
            "/health": {"get": {"summary": "Components, embedder, broker state, watermark lag", "responses": {
                "200": ok("Health", json!({"type": "object", "required": ["status", "components"], "properties": {"status": {"type": "string"}, "components": object()}}))}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "Text format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/kpis": {"get": {"summary": "Current KPI values", "parameters": [
                query("kpi", "KPI names, comma separated", json!({"type": "string"})),
                query("dims", "Dimension sets, comma separated: global, region, region+ship_mode, ...", json!({"type": "string"})),
                query("window", "`latest` (default) or a window start (epoch ms)", json!({"type": "string"}))],
                "responses": {"200": ok("KPI records", json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/KpiRecord"}}}})),
                              "400": problem("Bad parameter")}}},
            "/kpis/history": {"get": {"summary": "The recent windows of one KPI series", "parameters": [
                required_query("kpi", "KPI name", json!({"type": "string"})),
                query("dims", "name=value pairs, comma separated; absent: the global series", json!({"type": "string"}))],
                "responses": {"200": ok("Points, oldest first", object()), "400": problem("Bad parameter"), "404": problem("No such series")}}},
            "/deviations": {"get": {"summary": "Recent deviations, newest first", "parameters": deviation_params,
                "responses": {"200": ok("A page", list_of("Deviation")), "400": problem("Bad parameter")}}},
            "/deviations/{id}": {"get": {"summary": "One deviation and its case status", "parameters": [path_id("Deviation id")],
                "responses": {"200": ok("The deviation", json!({"$ref": "#/components/schemas/Deviation"})), "404": problem("Unknown")}}},
            "/detect-deviation": {"post": {"summary": "Evaluate order events against the live rules without ingesting them",
                "security": [{"apiKey": []}],
                "requestBody": body(json!({"type": "object", "required": ["events"], "additionalProperties": false, "properties": {
                    "events": {"type": "array", "maxItems": 1000, "items": {"type": "object"}},
                    "at": {"type": "integer", "description": "Evaluate as of this event time; absent: as if nothing else arrives"}}})),
                "responses": {"200": ok("Deviations and rejected events", object()), "400": problem("Bad body"), "401": unauthorized.clone(),
                              "413": problem("Body too large"), "415": problem("Not JSON"), "422": problem("Invalid body")}}},
            "/trigger-agent": {"post": {"summary": "Have an agent work on a deviation (or an order's newest deviation) now",
                "security": [{"apiKey": []}],
                "requestBody": body(json!({"type": "object", "additionalProperties": false, "properties": {
                    "deviation_id": {"type": "string"}, "order_id": {"type": "string"}, "note": {"type": "string", "maxLength": 4000}}})),
                "responses": {"200": ok("An existing case was worked on again", object()), "202": ok("A new case was handed to the agents", object()),
                              "400": problem("Bad body"), "401": unauthorized.clone(), "404": problem("Unknown deviation or order"),
                              "413": problem("Body too large"), "415": problem("Not JSON"), "422": problem("Invalid body"), "503": problem("Agents are off")}}},
            "/agent-response/{id}": {"get": {"summary": "The agents' work on a case (same as /cases/{id})", "parameters": [path_id("Case id (= deviation id)")],
                "responses": {"200": ok("The case", json!({"$ref": "#/components/schemas/Case"})), "404": problem("Unknown"), "503": problem("Agents are off")}}},
            "/cases": {"get": {"summary": "Recently updated cases", "parameters": [
                page_params()[0].clone(), query("order_id", "Only this order's cases", json!({"type": "string"}))],
                "responses": {"200": ok("Cases, newest first", object()), "400": problem("Bad parameter"), "503": problem("Agents are off")}}},
            "/cases/{id}": {"get": {"summary": "A case: deviation, conversation, runs, actions", "parameters": [path_id("Case id (= deviation id)")],
                "responses": {"200": ok("The case", json!({"$ref": "#/components/schemas/Case"})), "404": problem("Unknown"), "503": problem("Agents are off")}}},
            "/cases/{id}/messages": {"post": {"summary": "Add an operator or customer message; the agent answers", "parameters": [path_id("Case id")],
                "security": [{"apiKey": []}],
                "requestBody": body(json!({"type": "object", "required": ["role", "body"], "additionalProperties": false, "properties": {
                    "role": {"type": "string", "enum": ["operator", "customer"]}, "body": {"type": "string", "minLength": 1, "maxLength": 4000}}})),
                "responses": {"200": ok("The case after the agent's answer", json!({"$ref": "#/components/schemas/Case"})),
                              "400": problem("Bad body"), "401": unauthorized.clone(), "404": problem("Unknown case"), "413": problem("Body too large"),
                              "415": problem("Not JSON"), "422": problem("Invalid body"), "503": problem("Agents are off")}}},
            "/orders": {"get": {"summary": "Search recently active orders", "parameters": order_params,
                "responses": {"200": ok("A page", list_of("OrderSummary")), "400": problem("Bad parameter")}}},
            "/orders/{id}": {"get": {"summary": "An order: timeline, risk, deviations, agent cases", "parameters": [path_id("Order id")],
                "responses": {"200": ok("The order", object()), "404": problem("Unknown")}}},
            "/kb/search": {"get": {"summary": "Search the policy knowledge base", "parameters": [
                required_query("q", "Question", json!({"type": "string", "maxLength": 1000})),
                query("k", "Results (1-50, default 5)", json!({"type": "integer", "minimum": 1, "maximum": 50})),
                query("type", "Policy type", json!({"type": "string"})),
                query("jurisdiction", "Jurisdiction", json!({"type": "string"})),
                query("mode", "Retriever", json!({"type": "string", "enum": ["hybrid", "dense", "bm25"]}))],
                "responses": {"200": ok("Hits", object()), "400": problem("Bad parameter")}}},
            "/kb/documents": {"post": {"summary": "Add or replace a policy document (Markdown with front matter)",
                "security": [{"apiKey": []}],
                "requestBody": body(json!({"type": "object", "required": ["name", "text"], "additionalProperties": false, "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,200}$"}, "text": {"type": "string"}}})),
                "responses": {"201": ok("Indexed", object()), "400": problem("Bad body"), "401": unauthorized.clone(),
                              "413": problem("Body too large"), "415": problem("Not JSON"), "422": problem("Rejected document, with the reason")}}},
            "/settings/thresholds": {
                "get": {"summary": "KPI thresholds in force", "responses": {"200": ok("Thresholds", json!({"$ref": "#/components/schemas/ThresholdSet"}))}},
                "put": {"summary": "Change KPI thresholds of the running dataflow", "security": [{"apiKey": []}],
                    "requestBody": body(json!({"type": "object", "additionalProperties": {"type": "object", "additionalProperties": false, "properties": {
                        "warn": {"type": "number"}, "critical": {"type": "number"}, "min_count": {"type": "integer", "minimum": 0}}}})),
                    "responses": {"200": ok("Thresholds now in force", json!({"$ref": "#/components/schemas/ThresholdSet"})),
                                  "400": problem("Bad body"), "401": unauthorized, "413": problem("Body too large"),
                                  "415": problem("Not JSON"), "422": problem("Invalid change")}}}
        }
    })
}
