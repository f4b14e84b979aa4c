"""The store: schema, migrations, change capture, the queue and the status queries."""
