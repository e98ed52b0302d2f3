-- Room on every page for the next version of its rows.
--
-- A client's status and liveness are rewritten far more often than anything else: a reconcile
-- pass that assigns a new release to 50,000 clients rewrites 50,000 status rows. With pages half
-- filled by inserts, the new version of a row usually fits on the page of the old one, and
-- PostgreSQL updates it in place of an index entry (a heap-only tuple): the pass's status writes
-- take about a third less time. The tables take about twice the disk (a million clients' status
-- rows: some 360 MB instead of 180 MB). Pages written before this migration keep what they hold;
-- new pages, and every page of a table rewritten (VACUUM FULL, `tc-controller migrate`), leave
-- the room.
ALTER TABLE client_status SET (fillfactor = 50);
ALTER TABLE client_liveness SET (fillfactor = 50);
