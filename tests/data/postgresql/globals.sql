--
-- PostgreSQL database cluster dump
--

\restrict cmCMWjs1ksDaTrHws1ajC7rAGAoWyqA8KNM5QIRPSpV3rIcEY1F5QTfhaYIPawk

SET default_transaction_read_only = off;

SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

--
-- Roles
--

CREATE ROLE app_reader;
ALTER ROLE app_reader WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:ZmFrZQ==$ZmFrZQ==:ZmFrZQ==';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:ZmFrZQ==$ZmFrZQ==:ZmFrZQ==';

--
-- User Configurations
--








\unrestrict cmCMWjs1ksDaTrHws1ajC7rAGAoWyqA8KNM5QIRPSpV3rIcEY1F5QTfhaYIPawk

--
-- PostgreSQL database cluster dump complete
--

