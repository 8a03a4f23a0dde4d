-- One history record: $1 int8 id → a history row.
SELECT {finished_columns} FROM {history} WHERE id = $1::int8
