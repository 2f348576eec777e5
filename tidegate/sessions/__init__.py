"""The session runtime: the one way to open, resume and close a session (:mod:`.api`), the
session and its outbox, admission, limits, sensors, and the ports that ``store`` and
``cluster`` implement (:mod:`.ports`), with their in-process implementations."""
