-- pq migration 6: the per-minute record of jobs workers finished, per queue (what the
-- dashboard charts as throughput). Workers add to it every few seconds, off their jobs' path;
-- pruning removes minutes older than a day.
CREATE TABLE {throughput} (
  queue text NOT NULL,
  minute timestamptz NOT NULL,
  completed int8 NOT NULL CHECK (completed >= 0),
  failed int8 NOT NULL CHECK (failed >= 0),
  PRIMARY KEY (queue, minute)
);
