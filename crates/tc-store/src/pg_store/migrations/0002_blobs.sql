-- Package blobs, content-addressed, shared by every controller on the database. A blob is cut
-- into chunks of 1 MiB (the last one shorter; none for an empty blob), so that no statement
-- carries, and no process holds, a whole blob.
--
-- A `blobs` row means the blob is complete: its chunks and its row are written in one
-- transaction, after the digest and the size of the content were checked, so a reader that
-- finds the row finds every chunk. Chunks without a row cannot be committed (the foreign key is
-- checked at commit), and deleting the row deletes the chunks.
CREATE TABLE blobs (
    sha256 text COLLATE "C" PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size bigint NOT NULL CHECK (size >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE blob_chunks (
    sha256 text COLLATE "C" NOT NULL
        REFERENCES blobs (sha256) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    n integer NOT NULL CHECK (n >= 0),
    data bytea NOT NULL,
    PRIMARY KEY (sha256, n)
);
