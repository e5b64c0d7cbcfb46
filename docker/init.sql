-- Sample source table for docker-compose.yaml (runs once, when the postgres volume is created).
CREATE TABLE public.customers (
    customer_id bigint PRIMARY KEY,
    first_name  text NOT NULL,
    last_name   text NOT NULL,
    email       text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO public.customers (customer_id, first_name, last_name, email, created_at)
SELECT g, 'First' || g, 'Last' || g, 'customer' || g || '@example.com',
       timestamptz '2024-01-01 00:00:00+00' + g * interval '37 minutes'
FROM generate_series(1, 1000) AS g;
