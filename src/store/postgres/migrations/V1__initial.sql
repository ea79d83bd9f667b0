-- Flywheel's tables in PostgreSQL. Every table keeps the whole record as
-- `record` (json, exactly as the application writes it) plus the columns
-- that lookups, listings and a SOC's own SQL filter on. json rather than
-- jsonb: it keeps the text as written and accepts every string the
-- application can hold (jsonb refuses the \u0000 escape); `record->'field'`
-- and `record->>'field'` work on both.

CREATE TABLE api_keys (
    id          text COLLATE "C" PRIMARY KEY,
    name        text COLLATE "C" NOT NULL,
    role        text COLLATE "C" NOT NULL,
    -- SHA-256 of the key, hex; the key itself is never stored.
    hash        text COLLATE "C" NOT NULL UNIQUE,
    created_at  text COLLATE "C" NOT NULL,
    revoked_at  text COLLATE "C",
    record      json NOT NULL
);

CREATE TABLE audit (
    id      text COLLATE "C" PRIMARY KEY,
    at      text COLLATE "C" NOT NULL,
    actor   text COLLATE "C" NOT NULL,
    action  text COLLATE "C" NOT NULL,
    target  text COLLATE "C" NOT NULL,
    record  json NOT NULL
);

-- Listing order: the capture batch that first stored a conversation and
-- its index in that batch, newest first.
CREATE SEQUENCE capture_batches;

CREATE TABLE conversations (
    id            text COLLATE "C" PRIMARY KEY,
    batch         bigint NOT NULL,
    batch_index   integer NOT NULL,
    created_ms    bigint NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    text COLLATE "C" NOT NULL,
    parent_id     text COLLATE "C",
    status        text COLLATE "C" NOT NULL,
    threat_type   text COLLATE "C",
    severity      text COLLATE "C",
    alias         text COLLATE "C",
    versions      text[] NOT NULL,
    end_user      text COLLATE "C",
    turns         integer NOT NULL,
    text_hash     text COLLATE "C",
    duplicate_of  text COLLATE "C",
    -- Bumped by every change: an edit made from what was read is written
    -- only if nothing changed the conversation meanwhile.
    revision      bigint NOT NULL DEFAULT 0,
    record        json NOT NULL
);
CREATE UNIQUE INDEX conversations_listing ON conversations (batch DESC, batch_index DESC);
CREATE INDEX conversations_by_status ON conversations (status, batch DESC, batch_index DESC);
CREATE INDEX conversations_by_threat_type ON conversations (threat_type, batch DESC, batch_index DESC) WHERE threat_type IS NOT NULL;
CREATE INDEX conversations_by_severity ON conversations (severity, batch DESC, batch_index DESC) WHERE severity IS NOT NULL;
CREATE INDEX conversations_by_alias ON conversations (alias, batch DESC, batch_index DESC) WHERE alias IS NOT NULL;
CREATE INDEX conversations_by_user ON conversations (end_user, batch DESC, batch_index DESC) WHERE end_user IS NOT NULL;
CREATE INDEX conversations_by_version ON conversations USING gin (versions);
CREATE INDEX conversations_by_text ON conversations (text_hash, batch, batch_index) WHERE duplicate_of IS NULL AND text_hash IS NOT NULL;

CREATE TABLE inferences (
    id               text COLLATE "C" PRIMARY KEY,
    conversation_id  text COLLATE "C" NOT NULL,
    turn             integer,
    completion_id    text COLLATE "C",
    alias            text COLLATE "C",
    version          text COLLATE "C",
    provider_model   text COLLATE "C" NOT NULL,
    status           text COLLATE "C" NOT NULL,
    http_status      integer NOT NULL,
    latency_ms       double precision NOT NULL,
    key_id           text COLLATE "C" NOT NULL,
    end_user         text COLLATE "C",
    shadow_of        text COLLATE "C",
    -- What the conversation's first turn was assigned a version by.
    sticky           text COLLATE "C",
    created_at       text COLLATE "C" NOT NULL,
    -- The whole record: request (messages, params) and response included.
    record           json NOT NULL
);
CREATE INDEX inferences_by_conversation ON inferences (conversation_id);
CREATE INDEX inferences_by_completion ON inferences (completion_id) WHERE completion_id IS NOT NULL;
CREATE INDEX inferences_by_shadow ON inferences (shadow_of) WHERE shadow_of IS NOT NULL;

-- The continuation key a turn's follow-up presents (hex) → the turn.
CREATE TABLE thread_keys (
    key           text COLLATE "C" PRIMARY KEY,
    inference_id  text COLLATE "C" NOT NULL REFERENCES inferences (id) ON DELETE CASCADE
);
CREATE INDEX thread_keys_by_inference ON thread_keys (inference_id);

CREATE TABLE feedback (
    id               text COLLATE "C" PRIMARY KEY,
    inference_id     text COLLATE "C" NOT NULL,
    conversation_id  text COLLATE "C" NOT NULL,
    author           text COLLATE "C" NOT NULL,
    rating           smallint,
    thumbs           text COLLATE "C",
    threat_type      text COLLATE "C",
    severity         text COLLATE "C",
    quality_score    smallint,
    created_at       text COLLATE "C" NOT NULL,
    record           json NOT NULL
);
CREATE INDEX feedback_by_inference ON feedback (inference_id, id);

-- `key id:idempotency key` → the feedback it produced; the primary key
-- makes a key hold across every replica.
CREATE TABLE feedback_idempotency (
    key          text COLLATE "C" PRIMARY KEY,
    feedback_id  text COLLATE "C" NOT NULL
);

-- The dashboard counts over every conversation (one row), changed in the
-- transaction of every conversation change.
CREATE TABLE conversation_tallies (
    id       integer PRIMARY KEY CHECK (id = 1),
    tallies  json NOT NULL
);
INSERT INTO conversation_tallies VALUES (1, '{}');

CREATE TABLE version_tallies (
    alias    text COLLATE "C" NOT NULL,
    version  text COLLATE "C" NOT NULL,
    arm      text COLLATE "C" NOT NULL CHECK (arm IN ('live', 'shadow')),
    tally    json NOT NULL,
    PRIMARY KEY (alias, version, arm)
);

CREATE TABLE model_aliases (
    alias   text COLLATE "C" PRIMARY KEY,
    record  json NOT NULL
);

CREATE TABLE model_history (
    id      text COLLATE "C" PRIMARY KEY,
    alias   text COLLATE "C" NOT NULL,
    record  json NOT NULL
);
CREATE INDEX model_history_by_alias ON model_history (alias, id DESC);

CREATE TABLE alerts (
    id      text COLLATE "C" PRIMARY KEY,
    record  json NOT NULL
);

CREATE TABLE datasets (
    id          text COLLATE "C" PRIMARY KEY,
    name        text COLLATE "C" NOT NULL,
    format      text COLLATE "C" NOT NULL,
    created_at  text COLLATE "C" NOT NULL,
    record      json NOT NULL
);

CREATE TABLE dataset_files (
    dataset_id  text COLLATE "C" NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    split       text COLLATE "C" NOT NULL CHECK (split IN ('train', 'validation')),
    body        bytea NOT NULL,
    PRIMARY KEY (dataset_id, split)
);

CREATE TABLE fine_tuning_jobs (
    id         text COLLATE "C" PRIMARY KEY,
    alias      text COLLATE "C" NOT NULL,
    status     text COLLATE "C" NOT NULL,
    in_flight  boolean NOT NULL,
    record     json NOT NULL
);
CREATE INDEX fine_tuning_jobs_in_flight ON fine_tuning_jobs (id) WHERE in_flight;

CREATE TABLE evaluations (
    id      text COLLATE "C" PRIMARY KEY,
    record  json NOT NULL
);

CREATE TABLE evaluation_examples (
    evaluation_id  text COLLATE "C" NOT NULL,
    version        text COLLATE "C" NOT NULL,
    example_index  bigint NOT NULL,
    record         json NOT NULL,
    PRIMARY KEY (evaluation_id, version, example_index)
);

CREATE TABLE model_performance (
    alias          text COLLATE "C" NOT NULL,
    evaluation_id  text COLLATE "C" NOT NULL,
    version        text COLLATE "C" NOT NULL,
    metric         text COLLATE "C" NOT NULL,
    record         json NOT NULL,
    PRIMARY KEY (alias, evaluation_id, version, metric)
);

-- Background work that must run on one replica at a time: the holder
-- renews its lease before it expires; another may take it once it has.
CREATE TABLE leases (
    name        text COLLATE "C" PRIMARY KEY,
    holder      text COLLATE "C" NOT NULL,
    expires_at  timestamptz NOT NULL
);
