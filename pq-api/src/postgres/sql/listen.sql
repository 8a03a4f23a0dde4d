-- Listens on the table's channel (no parameters).
LISTEN {channel}
