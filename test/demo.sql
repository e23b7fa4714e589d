-- Examples run by test/run-demo.sh on a fresh demo cluster.
\pset footer off
CREATE EXTENSION llm_gateway;
\echo
\echo '== the extension is installed'
SELECT extname, extversion, llm.version() AS library_version
  FROM pg_extension WHERE extname = 'llm_gateway';
