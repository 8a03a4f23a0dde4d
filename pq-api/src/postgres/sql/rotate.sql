-- One rotation step of the jobs table's partitions (migration_11.sql), the current partition
-- full at {full_bytes} bytes → n int4, the partitions emptied. A simple query.
SELECT {rotate_fn}({full_bytes}::int8)
