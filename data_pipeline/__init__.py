"""Raw event logs -> per-user sequences -> WebDataset shards -> streaming DataModule."""
