-- Schema of the backout test app. Applied by the backend on every start and by
-- TestStack.seed(); every statement is idempotent.
--
-- Invariants (checked by TestStack.check_invariants, kept by the backend's writer
-- in single transactions):
--   * for every order: orders.total_cents = SUM(order_lines.amount_cents)
--   * SUM(accounts.balance_cents) = meta.v WHERE k = 'accounts_total'
--   * no account balance is negative

CREATE TABLE IF NOT EXISTS meta (
    k VARCHAR(64) NOT NULL PRIMARY KEY,
    v BIGINT NOT NULL
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS accounts (
    id INT NOT NULL PRIMARY KEY,
    owner VARCHAR(64) NOT NULL,
    balance_cents BIGINT NOT NULL
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS customers (
    id INT NOT NULL PRIMARY KEY,
    name VARCHAR(64) NOT NULL,
    email VARCHAR(128) NOT NULL
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS orders (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    customer_id INT NOT NULL,
    total_cents BIGINT NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS order_lines (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    order_id BIGINT NOT NULL,
    sku VARCHAR(32) NOT NULL,
    amount_cents BIGINT NOT NULL,
    KEY idx_order_lines_order (order_id),
    CONSTRAINT fk_order_lines_order FOREIGN KEY (order_id)
        REFERENCES orders (id) ON DELETE CASCADE
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS items (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB;

-- Ten accounts of 1000.00 each: the transfers move money, the sum stays 10000.00.
INSERT IGNORE INTO accounts (id, owner, balance_cents) VALUES
    (1, 'acct-01', 100000), (2, 'acct-02', 100000), (3, 'acct-03', 100000),
    (4, 'acct-04', 100000), (5, 'acct-05', 100000), (6, 'acct-06', 100000),
    (7, 'acct-07', 100000), (8, 'acct-08', 100000), (9, 'acct-09', 100000),
    (10, 'acct-10', 100000);
INSERT IGNORE INTO meta (k, v) VALUES ('accounts_total', 1000000);
INSERT IGNORE INTO meta (k, v) VALUES ('schema_version', 1);
