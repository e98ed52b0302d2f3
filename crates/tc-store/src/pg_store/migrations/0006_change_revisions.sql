-- The desired revision a status change recorded, in the change itself.
--
-- A reconcile pass that assigns a release to 50,000 clients records 50,000 `status` changes, and
-- every follower needs only each client's new desired revision to wake its long-polls. Read from
-- the status rows, that was a lookup and a JSON parse per client and follower; carried in the
-- change row it comes with the page of changes. NULL for other kinds, and for status changes
-- recorded before this migration (a follower then reads the revision from the status).
ALTER TABLE changes ADD COLUMN revision bigint;
