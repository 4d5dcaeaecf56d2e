-- jitgate controller schema, version 22: each evaluation's VM counts per resource group, so
-- that the compliance history of a scope (a resource group, or every group a person may
-- read) is read from a few rows per evaluation instead of every result of every evaluation
-- on the chart. Unmanaged hosts belong to no group (they count only fleet-wide, in
-- compliance_scans). Filled for the evaluations already stored.
CREATE TABLE compliance_counts (
    scan_id        BIGINT NOT NULL,
    resource_group TEXT NOT NULL,
    compliant      BIGINT NOT NULL,
    non_compliant  BIGINT NOT NULL,
    unknown        BIGINT NOT NULL,
    PRIMARY KEY (scan_id, resource_group)
);
INSERT INTO compliance_counts (scan_id, resource_group, compliant, non_compliant, unknown)
SELECT scan_id, resource_group,
       SUM(CASE WHEN state = 'Compliant' THEN 1 ELSE 0 END),
       SUM(CASE WHEN state = 'NonCompliant' THEN 1 ELSE 0 END),
       SUM(CASE WHEN state = 'Unknown' THEN 1 ELSE 0 END)
FROM compliance_results
WHERE kind = 'virtualMachine'
GROUP BY scan_id, resource_group;
