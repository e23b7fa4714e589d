--
-- quotas: llm.set_quota refuses bad input with a clear error, before
-- anything reaches llm.quotas (the worker's enforcement is tested in
-- test/t/024_quotas.pl)
--
SELECT expect_error($$SELECT llm.set_quota('q', 'calls', 10, 'day')$$);
SELECT expect_error($$SELECT llm.set_quota('q', 'requests', 10, 'week')$$);
SELECT expect_error($$SELECT llm.set_quota('q', 'requests', 10.5, 'day')$$);
SELECT expect_error($$SELECT llm.set_quota('q', 'requests', -1, 'day')$$);
SELECT expect_error($$SELECT llm.set_quota('q', 'requests', NULL, 'day')$$);
SELECT expect_error($$SELECT llm.set_quota('q', 'cost_usd', 1e9, 'month')$$);
SELECT expect_error($$SELECT llm.set_quota('q', 'cost_usd', 0.00000000001, 'month')$$);
SELECT expect_error($$SELECT llm.set_quota('q', 'requests', 10, 'day', warn_at => 1.5)$$);
SELECT expect_error($$SELECT llm.set_quota('q', 'requests', 10, 'day', role_name => 'no_such_role')$$);
SELECT expect_error($$SELECT llm.set_quota('q', 'requests', 10, 'day', alias => 'a', tag_key => 't', tag_value => 'v')$$);
SELECT expect_error($$SELECT llm.set_quota('q', 'requests', 10, 'day', tag_key => 't')$$);
SELECT count(*) AS quotas_created FROM llm.quotas;
-- a good one, replaced, dropped
SELECT llm.set_quota('q', 'cost_usd', 12.5, 'month', alias => 'claude', warn_at => 0.8);
SELECT llm.set_quota('q', 'requests', 1000, 'day', alias => 'claude');
SELECT name, scope, alias, metric, quota_limit, time_window, warn_at FROM llm.quotas;
SELECT llm.drop_quota('q');
SELECT count(*) AS quotas_left FROM llm.quotas;
