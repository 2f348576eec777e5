"""The starlette application: routes, authentication, sessions, configuration, the CLI."""
