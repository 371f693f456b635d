"""Static (per-position, channel-mixing) layers placed between recurrent cores."""
