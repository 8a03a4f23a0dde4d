-- Removes up to $1 int4 records of keys no job has and that hold no state → n int8.
SELECT {sweep_keys_fn}($1::int4) AS n
