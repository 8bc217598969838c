"""The source images as an observed asset: a source replaced under the same name makes its shard's pass assets stale."""
