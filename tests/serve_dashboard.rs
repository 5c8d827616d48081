//! The dashboard in a real headless Chromium against a real running job (`run --source
//! default`: the Superstore replay, then live generated orders) with an API key: KPI cards fill
//! and keep changing over `/ws/kpi`, deviations, heatmap and health show up, an order found by
//! search opens its drill-down (timeline), the agent can be run on it from the page and answers,
//! a follow-up gets a new answer, and the page logs no console error or uncaught exception on
//! the way. Screenshots land in `<target>/test-output/`.

mod browser;
mod serving;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use browser::Browser;
use serde_json::Value;

/// The API key the job requires (mutating endpoints and WebSockets); the page gets it as
/// `?token=`.
const TOKEN: &str = "dashboard-test-key";

/// `<target>/test-output`, created.
fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target directory")
        .join("test-output");
    std::fs::create_dir_all(&dir).expect("create test-output");
    dir
}

fn js_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn int(v: &Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_f64().map(|f| f as i64))
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

const AGENT_REPLIES: &str =
    "document.querySelectorAll('[data-testid=case-conversation] [data-role=agent]').length";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_kpis_and_drives_an_agent_from_an_order_drill_down() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let job = serving::RunningJob::start(
        dir.path(),
        &["--source", "default"],
        &[("FULFILLMENT_API_KEY", TOKEN), ("OPENAI_API_KEY", "")],
    );
    let browser = Browser::launch().await.expect("launch Chromium");
    let secs = |s| Duration::from_secs(s);
    let page = format!("http://{}/?token={TOKEN}", job.addr);
    browser.navigate(&page).await.unwrap();

    // KPI cards: all 16, filled with values, and updated live.
    let cards = browser
        .eval("document.querySelectorAll('[data-testid=kpi-card]').length")
        .await
        .unwrap();
    assert_eq!(int(&cards), 16, "one card per KPI");
    browser
        .wait_for(
            "[...document.querySelectorAll('[data-testid=kpi-card] [data-testid=kpi-value]')] \
             .filter(e => /\\d/.test(e.textContent)).length >= 12 && \
             /\\d/.test(document.querySelector('[data-kpi=on_time_rate] [data-testid=kpi-value]').textContent)",
            secs(90),
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "document.querySelector('[data-testid=ws-state]').dataset.state === 'live'",
            secs(30),
        )
        .await
        .unwrap();
    let updates = "Number(document.querySelector('[data-testid=kpi-updates]').textContent.replace(/\\D/g, ''))";
    let first = int(&browser.eval(updates).await.unwrap());
    let later = browser
        .wait_for(&format!("{updates} > {first} && {updates}"), secs(30))
        .await
        .unwrap();
    assert!(int(&later) > first, "KPI updates {first} -> {later}");

    // Deviations, the region x ship-mode heatmap and health arrive too.
    browser
        .wait_for(
            "document.querySelectorAll('[data-testid=deviation-item]').length > 0",
            secs(60),
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "[...document.querySelectorAll('[data-testid=heatmap-cell]')].filter(c => c.dataset.value).length >= 4",
            secs(60),
        )
        .await
        .unwrap();
    let health = browser
        .wait_for(
            "['ok', 'degraded'].includes(document.querySelector('[data-testid=health-status]').dataset.status) \
             && document.querySelector('[data-testid=health-status]').dataset.status",
            secs(30),
        )
        .await
        .unwrap();
    eprintln!("health: {health}");

    // An order with a deviation (so there is something for the agent to act on).
    let order_id = browser
        .wait_for(
            "fetch('/deviations?type=sla_delivery_breach,payment_failed,carrier_exception&limit=20') \
             .then(r => r.json()).then(j => (j.items.find(d => d.order_id) || {}).order_id || null)",
            secs(60),
        )
        .await
        .unwrap();
    let order_id = order_id.as_str().unwrap().to_string();

    // Orders view: search, open the drill-down.
    browser.click("a[data-view=orders]").await.unwrap();
    browser
        .type_text("[data-testid=order-search]", &order_id)
        .await
        .unwrap();
    let row = format!(
        "[data-testid=order-row][data-order-id={}]",
        js_str(&order_id)
    );
    browser
        .wait_for(
            &format!("!!document.querySelector({})", js_str(&row)),
            secs(30),
        )
        .await
        .unwrap();
    let rows = browser
        .eval("document.querySelectorAll('[data-testid=order-row]').length")
        .await
        .unwrap();
    assert!(int(&rows) >= 1);
    browser.click(&row).await.unwrap();
    browser
        .wait_for(
            &format!(
                "document.querySelector('[data-testid=order-detail]')?.dataset.orderId === {} && \
                 document.querySelectorAll('[data-testid=order-timeline] li').length > 0",
                js_str(&order_id)
            ),
            secs(30),
        )
        .await
        .unwrap();
    let timeline_visible = browser
        .eval(
            "(() => { const r = document.querySelector('[data-testid=order-timeline]').getBoundingClientRect(); \
             return r.width > 0 && r.height > 0; })()",
        )
        .await
        .unwrap();
    assert_eq!(timeline_visible, Value::Bool(true), "timeline rendered");

    // Run the agent from the page: once the trigger answered, the case it names shows its
    // status and its conversation ends with an agent reply.
    browser.click("[data-testid=trigger-agent]").await.unwrap();
    let status = browser
        .wait_for(
            "(() => { const b = document.querySelector('[data-testid=trigger-agent]'); \
             if (b.dataset.state === 'failed') throw new Error('POST /trigger-agent failed'); \
             const s = document.querySelector('[data-testid=case-status]'); \
             const conv = document.querySelector('[data-testid=case-conversation]'); \
             if (b.dataset.state !== 'done' || !s || !conv || s.dataset.caseId !== b.dataset.caseId \
                 || conv.dataset.pending) return null; \
             const msgs = conv.querySelectorAll('[data-role]'); \
             const last = msgs[msgs.length - 1]; \
             return last && last.dataset.role === 'agent' && s.textContent.trim() || null; })()",
            secs(60),
        )
        .await
        .unwrap();
    eprintln!("case status after trigger: {status}");
    let replies = int(&browser.eval(AGENT_REPLIES).await.unwrap());
    assert!(replies >= 1);

    // A follow-up from the operator gets a new agent reply after it.
    let question = "Customer called again: can we ship a replacement today?";
    browser
        .type_text("[data-testid=followup-input]", question)
        .await
        .unwrap();
    browser.click("[data-testid=followup-send]").await.unwrap();
    browser
        .wait_for(
            &format!(
                "(() => {{ const conv = document.querySelector('[data-testid=case-conversation]'); \
                 const msgs = [...conv.querySelectorAll('[data-role]')]; \
                 const q = msgs.findIndex(m => m.dataset.role === 'operator' && !m.dataset.optimistic \
                     && m.textContent.includes({})); \
                 return q >= 0 && msgs.slice(q + 1).some(m => m.dataset.role === 'agent'); }})()",
                js_str(question)
            ),
            secs(60),
        )
        .await
        .unwrap();
    assert!(int(&browser.eval(AGENT_REPLIES).await.unwrap()) > replies);

    let out = output_dir();
    let order_png = out.join("dashboard-order.png");
    let order_bytes = browser.screenshot(&order_png).await.unwrap();

    // Back to the overview for the main screenshot.
    browser
        .eval("document.querySelector('.d-close').click(); location.hash = '#overview'; true")
        .await
        .unwrap();
    browser
        .wait_for(
            "!document.getElementById('view-overview').hidden && !document.getElementById('drawer').classList.contains('open')",
            secs(10),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // the drawer's slide-out transition
    let png = out.join("dashboard.png");
    let bytes = browser.screenshot(&png).await.unwrap();
    assert!(
        bytes > 20 * 1024,
        "{}: {bytes} bytes, too small for a filled dashboard",
        png.display()
    );
    assert!(order_bytes > 20 * 1024, "{}", order_png.display());

    let errors = browser.console_errors();
    assert!(
        errors.is_empty(),
        "console errors or uncaught exceptions: {errors:#?}\nbrowser log errors: {:#?}",
        browser.log_errors()
    );
    eprintln!(
        "dashboard test took {:.1} s; screenshots {} ({bytes} B) and {} ({order_bytes} B)",
        started.elapsed().as_secs_f64(),
        png.display(),
        order_png.display()
    );
    drop(browser);
    drop(job);
}
