-- Runs on SQLite and on PostgreSQL alike: integers are BIGINT (SQLite gives BIGINT columns
-- integer affinity), so both databases read back 64-bit values through sqlx's Any driver.
-- The agent stage's record: a case per deviation with its conversation, every agent run with
-- what it saw and produced, and every action carried out or awaiting approval.
CREATE TABLE cases (
    id           TEXT PRIMARY KEY,          -- the deviation id: a deviation is acted on once
    deviation    TEXT NOT NULL,             -- the deviation as JSON
    status       TEXT NOT NULL,             -- queued | resolved | pending_approval | escalated
    agent        TEXT,                      -- the agent that last handled it
    hops         BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX cases_status ON cases (status);

CREATE TABLE case_messages (
    case_id  TEXT NOT NULL REFERENCES cases (id),
    seq      BIGINT NOT NULL,
    role     TEXT NOT NULL,                 -- deviation | agent | operator | customer | system
    body     TEXT NOT NULL,
    at       BIGINT NOT NULL,
    PRIMARY KEY (case_id, seq)
);

CREATE TABLE agent_runs (
    id                 TEXT PRIMARY KEY,    -- <case id>#<run number>
    case_id            TEXT NOT NULL REFERENCES cases (id),
    agent              TEXT NOT NULL,
    backend            TEXT NOT NULL,       -- offline-rules-v1 | openai:<model>
    prompt_hash        TEXT NOT NULL,
    retrieved          TEXT NOT NULL,       -- JSON array of chunk ids
    output             TEXT,                -- the resolution as JSON
    verdicts           TEXT NOT NULL,       -- JSON array of guardrail verdicts
    outcome            TEXT NOT NULL,       -- accepted | pending_approval | rejected | failed
    error              TEXT,
    attempts           BIGINT NOT NULL,
    latency_ms         BIGINT NOT NULL,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    at                 BIGINT NOT NULL
);
CREATE INDEX agent_runs_case ON agent_runs (case_id);

CREATE TABLE actions (
    id        TEXT PRIMARY KEY,             -- <run id>/<action number>
    case_id   TEXT NOT NULL REFERENCES cases (id),
    run_id    TEXT NOT NULL REFERENCES agent_runs (id),
    tool      TEXT NOT NULL,
    params    TEXT NOT NULL,                -- JSON
    status    TEXT NOT NULL,                -- done | pending_approval
    at        BIGINT NOT NULL
);
CREATE INDEX actions_case ON actions (case_id);
