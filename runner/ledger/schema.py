"""The ledger's tables, one copy for both backends (`{serial}` is the dialect's
auto-numbered key). Bump `SCHEMA_VERSION` with every change, and teach each backend's
migration the step from the previous version: a ledger outlives the tool that wrote it.

Version 1: tables keyed by campaign id alone (SQLite only).
Version 2: every table keyed by (environment, campaign id); `environments` remembers the
API host of each; `orphan_receipts` keeps receipts that matched nothing yet;
`apply_locks` names who holds the apply lock of a campaign.
Version 3: `destinations.content_digest`, a digest of what each destination was sent
(`compile.content_digest`), so `plan --state` can tell a recipient whose message changed
since it was accepted; NULL for rows recorded before (unknown).
"""

from __future__ import annotations

from typing import Final

SCHEMA_VERSION: Final = 3

SCHEMA: Final = """
CREATE TABLE environments (
    environment  TEXT PRIMARY KEY,
    api_host     TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

CREATE TABLE campaigns (
    environment  TEXT NOT NULL,
    campaign_id  TEXT NOT NULL,
    input_hash   TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (environment, campaign_id)
);

CREATE TABLE runs (
    run_id       TEXT PRIMARY KEY,
    environment  TEXT NOT NULL,
    campaign_id  TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    pid          INTEGER NOT NULL,
    hostname     TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    FOREIGN KEY (environment, campaign_id) REFERENCES campaigns(environment, campaign_id)
);
CREATE INDEX runs_by_campaign ON runs(environment, campaign_id, seq);

CREATE TABLE batches (
    environment         TEXT NOT NULL,
    batch_key           TEXT NOT NULL,
    campaign_id         TEXT NOT NULL,
    batch_index         INTEGER NOT NULL,
    api                 TEXT NOT NULL CHECK (api IN ('v1', 'v2')),
    status              TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'in-flight', 'accepted', 'failed', 'uncertain')),
    attempts            INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    http_status         INTEGER,
    vendor_code         TEXT,
    vendor_message      TEXT,
    message_id          TEXT,
    destinations_count  INTEGER NOT NULL,
    run_id              TEXT REFERENCES runs(run_id),
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    PRIMARY KEY (environment, batch_key),
    FOREIGN KEY (environment, campaign_id) REFERENCES campaigns(environment, campaign_id)
);
CREATE INDEX batches_by_campaign ON batches(environment, campaign_id, status);
CREATE INDEX batches_by_message_id ON batches(message_id) WHERE message_id IS NOT NULL;

CREATE TABLE destinations (
    environment     TEXT NOT NULL,
    campaign_id     TEXT NOT NULL,
    batch_key       TEXT NOT NULL,
    msisdn          TEXT NOT NULL,
    correlation_id  TEXT NOT NULL,
    status          TEXT NOT NULL
                    CHECK (status IN ('pending', 'in-flight', 'accepted', 'failed', 'uncertain')),
    content_digest  TEXT,
    UNIQUE (environment, campaign_id, msisdn, correlation_id),
    FOREIGN KEY (environment, batch_key) REFERENCES batches(environment, batch_key)
);
CREATE INDEX destinations_by_batch ON destinations(environment, batch_key);
CREATE INDEX destinations_by_correlation ON destinations(correlation_id);

CREATE TABLE receipts (
    receipt_id       {serial},
    environment      TEXT NOT NULL,
    campaign_id      TEXT NOT NULL,
    batch_key        TEXT,
    correlation_id   TEXT NOT NULL DEFAULT '',
    msisdn           TEXT NOT NULL DEFAULT '',
    transid          TEXT NOT NULL DEFAULT '',
    delivery_status  TEXT NOT NULL DEFAULT '',
    code             TEXT NOT NULL DEFAULT '',
    description      TEXT NOT NULL DEFAULT '',
    time_stamp       TEXT NOT NULL DEFAULT '',
    received_at      TEXT NOT NULL,
    -- the vendor may deliver the same webhook twice
    UNIQUE (environment, campaign_id, correlation_id, msisdn, transid, delivery_status, code, time_stamp)
);
CREATE INDEX receipts_by_campaign ON receipts(environment, campaign_id, delivery_status);

-- receipts that matched no destination (yet): kept, and matched when their batch appears
CREATE TABLE orphan_receipts (
    receipt_id       {serial},
    correlation_id   TEXT NOT NULL DEFAULT '',
    msisdn           TEXT NOT NULL DEFAULT '',
    transid          TEXT NOT NULL DEFAULT '',
    delivery_status  TEXT NOT NULL DEFAULT '',
    code             TEXT NOT NULL DEFAULT '',
    description      TEXT NOT NULL DEFAULT '',
    time_stamp       TEXT NOT NULL DEFAULT '',
    received_at      TEXT NOT NULL,
    UNIQUE (correlation_id, msisdn, transid, delivery_status, code, time_stamp)
);
CREATE INDEX orphan_receipts_by_transid ON orphan_receipts(transid);

-- who holds the apply lock of a campaign (the lock itself is the backend's)
CREATE TABLE apply_locks (
    environment  TEXT NOT NULL,
    campaign_id  TEXT NOT NULL,
    hostname     TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    since        TEXT NOT NULL,
    PRIMARY KEY (environment, campaign_id)
)
"""


# from version 2 to 3, on both backends
ADD_CONTENT_DIGEST: Final = "ALTER TABLE destinations ADD COLUMN content_digest TEXT"
