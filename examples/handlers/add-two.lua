-- POST /api {"body":[{"topic":"rpc","action":"make","rpcName":"add-two","data":{"numA":1,"numB":2}}]}
return function(data)
  return data.numA + data.numB
end
