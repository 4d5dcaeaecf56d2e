-- jitgate controller schema, version 6: a policy's scope is stored as the API names it
-- (virtualMachine | resourceGroup), the one spelling of PolicyScope.
UPDATE policies SET scope_kind = 'virtualMachine' WHERE scope_kind = 'vm';
UPDATE policies SET scope_kind = 'resourceGroup' WHERE scope_kind = 'rg';
