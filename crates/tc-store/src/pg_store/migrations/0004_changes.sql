-- The change feed of controller replicas sharing one database, and where the leader serves.
--
-- `changes` gets one row per client, object or setting a transaction changed, in that same
-- transaction (so a change is recorded exactly when it commits), and the transaction notifies
-- channel `thinfleet_changes` at commit. A replica that follows the others' writes LISTENs on the
-- channel and reads the rows after the last sequence number it saw. Writers take one advisory
-- lock just before inserting their rows and hold it until they commit, so sequence numbers are
-- handed out in commit order: a reader never finds a number below one it already read. Rolled
-- back transactions leave gaps in the numbers. Rows older than the store's retention are pruned,
-- oldest first; `meta.changes_pruned_through` is the highest number pruned, so that a reader
-- behind it knows it missed changes and must reload everything.
CREATE TABLE changes (
    seq bigserial PRIMARY KEY,
    -- "client" (name: the client's), "object" (name: Kind/name), "setting" (name: the key), or
    -- a kind a caller announces (such as "wake").
    kind text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX changes_at ON changes (at);
INSERT INTO meta (key, value) VALUES ('changes_pruned_through', 0);

-- The URL the lease holder serves at (for followers to forward to); NULL when unknown.
ALTER TABLE leader ADD COLUMN url text;
