"""Operations on a deployment's streams: backup and restore."""
