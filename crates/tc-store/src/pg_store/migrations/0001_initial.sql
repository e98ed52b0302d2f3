-- The first schema of the PostgreSQL store. Documents are the JSON the redb store keeps (text, as
-- serde_json writes them, so that they read back exactly); names and keys sort bytewise
-- (COLLATE "C"), as redb's keys do, so that listings come in the same order from both stores.

-- Counters: the last resourceVersion handed out, the sequence numbers the next event and audit
-- entry get. Writers lock their counter's row first, which orders writes as redb's single writer
-- does.
CREATE TABLE meta (
    key text COLLATE "C" PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO meta (key, value) VALUES ('revision', 0), ('next_event_seq', 1), ('next_audit_seq', 1);

-- ClientGroup, PackageRelease and Task objects.
CREATE TABLE objects (
    kind text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    object text NOT NULL,
    PRIMARY KEY (kind, name)
);

-- Clients in parts, as the redb store keeps them: the object (metadata and spec, carrying the
-- resourceVersion), the status without inventory and liveness, the inventory, the liveness.
CREATE TABLE clients (
    name text COLLATE "C" PRIMARY KEY,
    machine_id text COLLATE "C" NOT NULL,
    -- NULL when the client has no key; a key belongs to one client.
    public_key text COLLATE "C" UNIQUE,
    object text NOT NULL
);
CREATE INDEX clients_machine_id ON clients (machine_id, name);
CREATE TABLE client_status (
    name text COLLATE "C" PRIMARY KEY,
    status text NOT NULL
);
CREATE TABLE client_inventory (
    name text COLLATE "C" PRIMARY KEY,
    inventory text NOT NULL
);
CREATE TABLE client_liveness (
    name text COLLATE "C" PRIMARY KEY,
    last_heartbeat_millis bigint NOT NULL,
    -- JSON of the load reported with the heartbeat.
    load text NOT NULL
);
-- The last load history a client uploaded, in the redb store's compact encoding (a 21-byte header
-- and four bytes a sample).
CREATE TABLE client_history (
    name text COLLATE "C" PRIMARY KEY,
    history bytea NOT NULL
);

-- The newest events (at most the store's capacity).
CREATE TABLE events (
    seq bigint PRIMARY KEY,
    kind text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    event text NOT NULL
);

-- The audit trail, apart from the events.
CREATE TABLE audit (
    seq bigint PRIMARY KEY,
    at_millis bigint NOT NULL,
    entry text NOT NULL
);

CREATE TABLE settings (
    key text COLLATE "C" PRIMARY KEY,
    value text NOT NULL
);

-- Task runs, their results per target, and the logs a collectLogs result carried.
CREATE TABLE task_runs (
    task text COLLATE "C" NOT NULL,
    run bigint NOT NULL,
    stored text NOT NULL,
    PRIMARY KEY (task, run)
);
CREATE TABLE task_results (
    task text COLLATE "C" NOT NULL,
    run bigint NOT NULL,
    client text COLLATE "C" NOT NULL,
    result text NOT NULL,
    PRIMARY KEY (task, run, client)
);
CREATE TABLE task_logs (
    task text COLLATE "C" NOT NULL,
    run bigint NOT NULL,
    client text COLLATE "C" NOT NULL,
    logs text NOT NULL,
    PRIMARY KEY (task, run, client)
);
