-- jitgate controller schema, version 30: where each agent's program runs on each interface
-- (XDP link, libxdp dispatcher slot or tcx ingress; its position; the programs ahead of it;
-- what is wrong there), from its last hook report (protocol level 7; docs/protocol.md). JSON,
-- an array of the API's InterfaceHook; NULL until the agent reports (older agents never do).
ALTER TABLE agents ADD COLUMN hooks TEXT;
