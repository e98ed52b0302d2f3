-- The leader lease of controller replicas on one database. One row: who holds it, its epoch (one
-- more at every change of holder) and when it expires, by the server's clock only. A replica
-- writes only while it holds the lease at the epoch it took: every writing transaction checks
-- the row (FOR SHARE) just before it commits, so a replica that lost the lease (paused, cut off)
-- cannot write after another took over (fencing).
CREATE TABLE leader (
    id integer PRIMARY KEY CHECK (id = 1),
    holder text COLLATE "C" NOT NULL,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
INSERT INTO leader (id, holder, epoch, expires_at) VALUES (1, '', 0, '-infinity');
