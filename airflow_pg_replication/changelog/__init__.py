"""A slot group's change log: captured pgoutput messages per table, in durable segments, until the table applies them.

Local directory or object storage through fsspec; no Airflow here (``operators/change_log_storage.py``
builds the filesystem from an Airflow connection).
"""
