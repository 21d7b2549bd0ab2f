-- Raises: the client gets {"success":false,"error":"boom","errorEvent":"RPC_ERROR"};
-- the file and line are logged, never sent.
return function()
  error("boom")
end
