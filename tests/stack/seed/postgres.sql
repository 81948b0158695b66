-- Deterministic seed data of PostgreSQL (TestStack.seed): idempotent.
CREATE TABLE IF NOT EXISTS customers (id INT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL);
CREATE SCHEMA IF NOT EXISTS ledger;
CREATE TABLE IF NOT EXISTS ledger.entries (id INT PRIMARY KEY, customer_id INT NOT NULL REFERENCES customers (id), note TEXT NOT NULL);
INSERT INTO customers (id, name, email) VALUES
    (1, 'Ada Lovelace', 'ada@example.test'),
    (2, 'Alan Turing', 'alan@example.test'),
    (3, 'Grace Hopper', 'grace@example.test'),
    (4, 'Edsger Dijkstra', 'edsger@example.test'),
    (5, 'Barbara Liskov', 'barbara@example.test'),
    (6, 'Donald Knuth', 'donald@example.test'),
    (7, 'Margaret Hamilton', 'margaret@example.test'),
    (8, 'Ken Thompson', 'ken@example.test'),
    (9, 'Dennis Ritchie', 'dennis@example.test'),
    (10, 'Frances Allen', 'frances@example.test'),
    (11, 'John Backus', 'john@example.test'),
    (12, 'Leslie Lamport', 'leslie@example.test'),
    (13, 'Radia Perlman', 'radia@example.test'),
    (14, 'Tony Hoare', 'tony@example.test'),
    (15, 'Niklaus Wirth', 'niklaus@example.test'),
    (16, 'Shafi Goldwasser', 'shafi@example.test'),
    (17, 'Robin Milner', 'robin@example.test'),
    (18, 'Adele Goldberg', 'adele@example.test'),
    (19, 'Butler Lampson', 'butler@example.test'),
    (20, 'Sophie Wilson', 'sophie@example.test')
ON CONFLICT (id) DO NOTHING;
INSERT INTO ledger.entries (id, customer_id, note) SELECT g, g, E'opening balance\nline two' FROM generate_series(1, 20) g ON CONFLICT (id) DO NOTHING;
