-- Returns nothing: the result has no "data" key.
return function() end
