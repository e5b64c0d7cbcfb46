"""PostgreSQL side: catalog, slots and publications, snapshot reads (binary COPY), change reads, the pgoutput decoder,
type mapping.
"""
